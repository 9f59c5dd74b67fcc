"""Property-based and heavier checks of `cl_scale.param` that would clutter the notebook.

hypothesis (a dev dependency) draws widths, γ0 values and seeds, so the exact identities of the
parameterization notebook are checked far from the handful of points the notebook shows."""
import math
import pytest
import torch
from hypothesis import given, settings, strategies as st
from cl_scale.param import *

f64 = torch.float64

def _step(model, lr, x, y, task=None):
    fit(model, len(x), regression_loss(x, y, task), 1, lr, bs=len(x), shuffle=False, optimizer=make_optimizer)
    with torch.no_grad(): return model(x, task)

@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(['ntp', 'mup']), g0=st.floats(0.01, 5.0), width=st.integers(1, 10_000), n0=st.integers(1, 512))
def test_scale_identities(kind, g0, width, n0):
    p = Parameterization(kind, g0 if kind == 'mup' else 1.0, base_width=n0)
    s = p.scales(width)
    assert math.isclose(s.readout_mult * s.gamma * math.sqrt(width), 1.0, rel_tol=1e-12)
    assert math.isclose(s.hidden_mult, 1 / math.sqrt(width), rel_tol=1e-12)
    # every parameterization is μP at its effective γ0: same readout multiplier and learning rate
    eq = Parameterization('mup', s.gamma0_eff, base_width=n0)
    assert math.isclose(eq.readout_mult(width), s.readout_mult, rel_tol=1e-12)
    assert math.isclose(eq.lr_mult(width), s.lr_mult, rel_tol=1e-12)

@settings(max_examples=12, deadline=None)
@given(width=st.integers(2, 300), depth=st.integers(1, 3), seed=st.integers(0, 10_000), ro=st.sampled_from(['zero', 'centered']))
def test_ntp_is_mup_at_effective_gamma0(width, depth, seed, ro):
    ntp = Parameterization('ntp', readout=ro)
    mup = Parameterization('mup', ntp.gamma0_eff(width), readout=ro)
    nets = []
    for p in (ntp, mup):
        torch.manual_seed(seed); nets.append(MLP(7, width, depth, 2, p, dtype=f64))
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(9, 7, generator=g, dtype=f64), torch.randn(9, 2, generator=g, dtype=f64)
    torch.testing.assert_close(nets[0](x), nets[1](x), rtol=0, atol=1e-10)
    torch.testing.assert_close(_step(nets[0], 0.7, x, y), _step(nets[1], 0.7, x, y), rtol=0, atol=1e-10)

@pytest.mark.parametrize('ro', ['zero', 'centered'])
def test_resnet_mup_at_base_width_is_ntp(ro):
    "μP with γ0 = 1 at the base width is NTP, for the ResNet too (forward, and two SGD steps)"
    x, y = torch.randn(6, 1, 8, 8, dtype=f64), torch.randn(6, 3, dtype=f64)
    nets = []
    for p in (Parameterization('mup', 1.0, base_width=8, readout=ro), Parameterization('ntp', base_width=8, readout=ro)):
        torch.manual_seed(0); nets.append(ResNet(1, 3, width=8, depth=3, param=p, dtype=f64))
    torch.testing.assert_close(nets[0](x), nets[1](x), rtol=0, atol=1e-10)
    for _ in range(2): outs = [_step(n, 0.5, x, y) for n in nets]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=1e-10)
    assert (outs[0] - nets[0](x, centered=False) if ro == 'centered' else outs[0]).abs().max() > 0  # it did train

def test_resnet_ntp_is_mup_at_effective_gamma0():
    ntp = Parameterization('ntp', base_width=8, readout='centered')
    mup = Parameterization('mup', ntp.gamma0_eff(32), base_width=8, readout='centered')
    x, y = torch.randn(4, 1, 8, 8, dtype=f64), torch.randn(4, 2, dtype=f64)
    nets = []
    for p in (ntp, mup):
        torch.manual_seed(1); nets.append(ResNet(1, 2, width=32, depth=3, param=p, dtype=f64))
    torch.testing.assert_close(_step(nets[0], 0.5, x, y), _step(nets[1], 0.5, x, y), rtol=0, atol=1e-10)

def test_resnet_heads_and_zero_output():
    torch.manual_seed(0)
    net = ResNet(3, 4, width=8, depth=3, param=Parameterization('mup', 0.3), n_heads=2)
    x = torch.randn(5, 3, 16, 16)
    assert torch.equal(net(x, 1).detach(), torch.zeros(5, 4))
    with pytest.raises(IndexError, match='outside the 2 head'): net(x, 2)
    assert net.width == 8 and net.features(x).shape == (5, 32)

def test_centered_model_survives_state_dict_roundtrip():
    "θ0 is saved with the model, so a reloaded centered model computes the same function"
    torch.manual_seed(0)
    p = Parameterization('mup', 0.5, readout='centered')
    a = MLP(10, 64, 2, 3, p)
    x, y = torch.randn(8, 10), torch.randn(8, 3)
    for _ in range(3): out = _step(a, 1.0, x, y)
    torch.manual_seed(123)
    b = MLP(10, 64, 2, 3, p)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b(x), out)
    assert out.abs().max() > 1e-3

def test_zero_readout_gives_no_hidden_gradient_on_the_first_step():
    "The mechanism behind the O(γ0²) early movement with a zero readout"
    torch.manual_seed(0)
    net = MLP(10, 32, 2, 1, Parameterization('mup', 0.5))
    loss = ((net(torch.randn(4, 10)) - 1)**2).mean()
    loss.backward()
    assert all(l.weight.grad.abs().max() == 0 for l in net.layers)
    assert net.readout.weight.grad.abs().max() > 0

def test_sp_is_pytorch_default_init():
    torch.manual_seed(0)
    net = MLP(300, 200, 1, 5, Parameterization('sp'))
    w = net.layers[0].weight
    bound = 1 / math.sqrt(300)
    assert w.abs().max() <= bound and abs(w.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    assert net.scales.lr_mult == 1 and net.layers[0].mult == 1

@pytest.mark.slow
def test_resnet_coordinate_check():
    "The ResNet passes the coordinate check too: μP flat in width, NTP shrinking like N^-1/2 (centered readout)"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=g); y = torch.randn(16, 1, generator=g)
    sl = {}
    for kind, g0 in (('mup', 0.5), ('ntp', 1.0)):
        p = Parameterization(kind, g0, base_width=16, readout='centered')
        recs = coord_check(lambda w: ResNet(1, 1, width=w, depth=3, param=p), [16, 64, 256], x, y, lr=1.0, steps=2)
        sl[kind] = coord_slopes(recs)
    blocks = [k for k in sl['mup'] if k.startswith('blocks')]
    assert all(abs(sl['mup'][k]) < 0.15 for k in blocks), sl['mup']
    assert all(abs(sl['ntp'][k] + 0.5) < 0.15 for k in blocks), sl['ntp']

def test_coord_check_moves_the_batch_to_the_model():
    "A float64 model checked on the default float32 batch: the batch follows the model's dtype"
    x, y = coord_check_data(n=8, d_in=5)
    recs = coord_check(lambda w: MLP(5, w, 1, 1, Parameterization('mup', 0.5), dtype=f64), [16, 32], x, y, steps=2, seeds=(0,))
    assert {r['layer'] for r in recs} == {'layers.0', 'readout', 'output'}
    assert len(recs) == 2 * 2 * 3 and all(math.isfinite(r['delta']) for r in recs)
    assert all(r['delta'] > 0 for r in recs if r['step'] == 2)

_KINDS5 = st.tuples(*[st.sampled_from([('mup', 0.05), ('mup', 0.3), ('mup', 1.0), ('mup', 3.0), ('ntp', 1.0), ('sp', 1.0)])] * 5)

@settings(max_examples=12, deadline=None)
@given(kinds=_KINDS5, depth=st.integers(1, 3), width=st.integers(2, 24), ro=st.sampled_from(['zero', 'centered', 'random']),
       act=st.sampled_from(['relu', 'tanh', 'gelu', 'linear']), lrs=st.lists(st.floats(0.01, 0.4), min_size=4, max_size=4),
       seed=st.integers(0, 10_000), loop_wgrad=st.booleans())
def test_batched_stacked_path_is_the_generic_path_and_the_loop(kinds, depth, width, ro, act, lrs, seed, loop_wgrad):
    """`Batched`'s stacked MLP path (its weight gradient by `bmm` or one product per model) = its generic `vmap` path
    = one model at a time, to 1e-10 in float64, for any mix of parameterizations and per-model rates; a fifth model
    with an absurd rate stops at the same step on both batched paths"""
    import cl_scale.param as P
    with pytest.MonkeyPatch.context() as mp:
        if loop_wgrad: mp.setattr(P, '_WGRAD_LOOP', 0)
        _stacked_generic_loop(kinds, depth, width, ro, act, lrs, seed)

def _stacked_generic_loop(kinds, depth, width, ro, act, lrs, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(60, 4, generator=g, dtype=f64), torch.randn(60, 2, generator=g, dtype=f64)
    def make(i):
        kind, g0 = kinds[i]
        torch.manual_seed(seed + i); return MLP(4, width, depth, 2, Parameterization(kind, g0, readout=ro), act=act, dtype=f64)
    rates, seeds, loss = lrs + [1e12], [seed + i for i in range(5)], regression_loss(x, y)
    runs = {}
    for stacked in (True, False):
        eng = Batched([make(i) for i in range(5)], rates, stacked=stacked)
        runs[stacked] = fit(eng, 60, loss, 2, seed=seeds, bs=16, max_loss=1e6, record=True), eng.outputs(x[:8])
    (rs, os_), (rg, og) = runs[True], runs[False]
    assert [d is None for d in rs.diverged] == [d is None for d in rg.diverged]
    if rs.diverged[4] is not None: assert rs.diverged[4]['step'] == rg.diverged[4]['step']
    for i in range(4):
        if rs.diverged[i] is not None: continue        # a live model blew up on both paths (a large SP rate): nothing to compare
        lone = make(i)
        r1 = fit(lone, 60, loss, 2, rates[i], seed=seeds[i], bs=16, optimizer=make_optimizer, record=True)
        for r in (rg, r1): torch.testing.assert_close(torch.tensor(rs.losses[i]), torch.tensor(r.losses[-1 if r is r1 else i]), rtol=1e-9, atol=1e-10)
        for a, b, c in zip(rs.model[i].parameters(), rg.model[i].parameters(), lone.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10); torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(os_[i], og[i], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(os_[i], lone(x[:8]), rtol=1e-9, atol=1e-10)
