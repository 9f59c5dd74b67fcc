"""Checks of `cl_scale.fusion` beyond the notebook: permutation recovery over many random permutations and model
shapes (hypothesis), weight-based recovery, heterogeneous BERT fusion in both directions, and the fast cost path
(input Gram matrices, matrix-product distances) against a plain computation of the definition; and the `device` option
(issue 22): CPU fusions equal to values stored from the version before it, inputs on two devices reported by name, a
device that is not here refused before any work."""
import math
import pytest
import torch
from hypothesis import given, settings, strategies as st
from cl_scale.models import ViT, BERT
from cl_scale.ot import TransportMap, ot_plan
from cl_scale.fusion import align, fuse, permuted_copy, collect_activations, graph_for, Lin, Attn, Map
from cl_scale.fusion import _walk, _build, _average

@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), heads=st.sampled_from([1, 2, 4]), depth=st.integers(1, 2), bert=st.booleans(),
       per_head=st.booleans())
def test_permuted_copy_is_recovered(seed, heads, depth, bert, per_head):
    torch.manual_seed(seed)
    if bert:
        m = BERT(vocab_size=40, max_len=8, d=16, depth=depth, heads=heads, mlp=24).double()
        x = torch.randint(1, 40, (24, 8))
    else:
        m = ViT(d=16, depth=depth, heads=heads, mlp=24).double()
        x = torch.randn(24, 1, 8, 8, dtype=torch.float64)
    p = permuted_copy(m, seed=seed + 1)
    torch.testing.assert_close(p(x), m(x), rtol=1e-9, atol=1e-10)
    back = align(p, m, x, per_head=per_head)
    torch.testing.assert_close(back(x), m(x), rtol=1e-8, atol=1e-9)

def test_weight_based_recovery():
    torch.manual_seed(0)
    m = ViT(d=24, depth=2, heads=4, mlp=32).double()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    back = align(permuted_copy(m, seed=3), m, cost='wts')          # no calibration data needed
    torch.testing.assert_close(back(x), m(x), rtol=1e-8, atol=1e-9)

@pytest.mark.parametrize('wide_is_anchor', [False, True])
def test_heterogeneous_bert_both_ways(wide_is_anchor):
    torch.manual_seed(0)
    narrow = BERT(vocab_size=50, max_len=12, d=24, depth=2, heads=4, mlp=32).double()
    wide = BERT(vocab_size=50, max_len=12, d=40, d_qkv=48, depth=2, heads=4, mlp=72).double()
    ids = torch.randint(1, 50, (30, 12))
    models, anchor = ([narrow, wide], 1) if wide_is_anchor else ([wide, narrow], 1)
    f = fuse(models, anchor=anchor, calib_data=ids, solver='sinkhorn', reg=0.05)
    ref = models[anchor]
    for k, v in ref.state_dict().items(): assert f.state_dict()[k].shape == v.shape, k
    out = f(ids)
    assert torch.isfinite(out).all() and out.std() > 0

def reference_fuse(model, anchor, x, solver='emd', reg=0.05):
    """The fusion of `model` into `anchor` with every map computed plainly from its definition: each layer's recorded
    outputs, standardised with `torch.std`, distances by exact differences (no matrix-product formula, no input Gram
    matrix, no shared inputs), divided by their maximum, then `ot_plan`. Returns (aligned, fused) state dicts."""
    graph = graph_for(anchor)
    ra, rb = (collect_activations(m, x, graph, via_inputs=False) for m in (model, anchor))
    def plain(key):
        za, zb = ((a - a.mean(1, keepdim=True)) / (a.std(1, correction=0, keepdim=True) + 1e-9)
                  for a in (ra[key].double(), rb[key].double()))
        D = torch.cdist(za, zb, compute_mode='donot_use_mm_for_euclid_dist')
        return TransportMap(ot_plan(D / D.max(), solver, reg), solver)
    given = {}
    for n in graph:
        if isinstance(n, Lin) and n.out is not None and not n.reuse: given[n.path] = plain(n.path)
        elif isinstance(n, Attn): given[n.path] = {p: plain(f"{n.path}.{nm}") for p, nm in zip('qkv', n.names)}
        elif isinstance(n, Map): given[n.acts] = plain(n.acts)
    aligned = _build(anchor, _walk(model, anchor, graph, None, None, given=given).out)
    return aligned.state_dict(), _average([aligned, anchor], [0.5, 0.5], anchor).state_dict()

def assert_same_fusion(model, anchor, x, solver, tol):
    "`align` and `fuse` (fast path) give the parameters of `reference_fuse` (exact maps: equal to rounding)"
    ref_aligned, ref_fused = reference_fuse(model, anchor, x, solver)
    aligned, fused = align(model, anchor, x, solver=solver).state_dict(), fuse([model, anchor], anchor=1, calib_data=x, solver=solver).state_dict()
    for k, v in ref_fused.items():
        if v.is_floating_point():
            torch.testing.assert_close(aligned[k], ref_aligned[k], rtol=0, atol=tol)
            torch.testing.assert_close(fused[k], v, rtol=0, atol=tol)

@pytest.mark.parametrize('solver, tol', [('emd', 1e-12), ('sinkhorn', 1e-7)])
@pytest.mark.parametrize('bert', [False, True])
def test_fast_costs_compute_the_definition(solver, tol, bert):
    "Two independent models (MLP 4d: fc1 and Q/K/V recorded by their inputs): the fused parameters of the definition"
    torch.manual_seed(4)
    if bert:
        mk = lambda: BERT(vocab_size=40, max_len=10, d=24, depth=2, heads=4, mlp=96).double()
        x = torch.randint(1, 40, (40, 10)); x[:6, 6:] = 0
    else:
        mk = lambda: ViT(d=24, depth=2, heads=4, mlp=96).double()
        x = torch.randn(40, 1, 8, 8, dtype=torch.float64)
    a, b = mk(), mk()
    assert any(k.endswith('@in') for k in collect_activations(a, x, graph_for(a)))     # the shortcuts are taken
    assert_same_fusion(a, b, x, solver, tol)

def float32_pair(seed=5):
    torch.manual_seed(seed)
    mk = lambda: ViT(d=32, depth=2, heads=4, mlp=128)                 # float32, as trained models are
    return mk(), mk(), torch.randn(64, 1, 8, 8)

def test_float32_products_match_float64(monkeypatch):
    """A float32 model's costs come from float32 products (its activations' dtype). Against float64 products of the same
    activations, every cost moves by float32 rounding only (< 1e-5 of the largest, measured ~1e-7) and the exact maps and
    fused parameters are the same."""
    import cl_scale.fusion as F
    a, b, x = float32_pair()
    g = graph_for(b)
    acts_a, acts_b = (collect_activations(m, x, g) for m in (a, b))
    assert acts_a['blocks.0.fc1@in'].dtype == torch.float32
    keys = [n.path for n in g if isinstance(n, Lin) and n.out is not None] + [f"{n.path}.{p}" for n in g if isinstance(n, Attn) for p in n.names]
    c32 = F._walk(a, b, [], acts_a, acts_b)
    C32 = {k: c32.act_cost(k) for k in keys}
    _, m32 = align(a, b, x, return_maps=True); f32 = fuse([a, b], anchor=1, calib_data=x).state_dict()
    import cl_scale.ot as O
    monkeypatch.setattr(O, '_work_dtype', lambda *xs: torch.float64)   # the costs' long products, now in float64
    c64 = F._walk(a, b, [], acts_a, acts_b)
    for k in keys: torch.testing.assert_close(C32[k], c64.act_cost(k), rtol=0, atol=1e-5)
    _, m64 = align(a, b, x, return_maps=True); f64 = fuse([a, b], anchor=1, calib_data=x).state_dict()
    for k in m64: assert torch.equal(m32[k].P, m64[k].P), k
    for k, v in f64.items(): assert torch.equal(f32[k], v), k

def test_float32_permuted_copy_is_recovered():
    a, _, x = float32_pair(6)
    back, maps = align(permuted_copy(a, seed=1), a, x, return_maps=True)
    assert all(m.is_permutation() for m in maps.values())
    for k, v in a.state_dict().items(): assert torch.equal(back.state_dict()[k], v), k   # a permutation moves values exactly

def test_threads_do_not_change_the_result():
    "With two torch threads the models are recorded, and the maps computed, on worker threads of one torch thread each: the same numbers as one thread"
    a, b, x = float32_pair(7)
    before = torch.get_num_threads()
    try:
        out = {}
        for t in (1, 2):
            torch.set_num_threads(t)
            tm = {}
            out[t] = fuse([a, b], anchor=1, calib_data=x, timings=tm).state_dict()
            assert torch.get_num_threads() == t and sorted(tm) == ['activations', 'costs', 'solves', 'weights']
    finally: torch.set_num_threads(before)
    for k, v in out[1].items(): assert torch.equal(out[2][k], v), k

@pytest.mark.parametrize('opts', [dict(), dict(cost='wts'), dict(qk='tied'), dict(per_head=True), dict(qk='tied', cost='wts')])
@pytest.mark.parametrize('bert', [False, True])
def test_solver_limits_reach_every_plan(monkeypatch, opts, bert):
    "num_iter_max and tol reach every plan the fusion builds: activation maps, weight maps, tied Q/K, per-head maps, Map nodes"
    import cl_scale.fusion as F
    calls = []
    def spy(fn):
        def wrapped(*args, **kw):
            calls.append((fn.__name__, kw.get('num_iter_max'), kw.get('tol')))
            return fn(*args, **kw)
        return wrapped
    monkeypatch.setattr(F, 'plan_map', spy(F.plan_map)); monkeypatch.setattr(F, 'transport_map', spy(F.transport_map))
    torch.manual_seed(0)
    if bert:
        mk = lambda: BERT(vocab_size=30, max_len=8, d=16, depth=1, heads=2, mlp=24).double()
        x = torch.randint(1, 30, (12, 8))
    else:
        mk = lambda: ViT(d=16, depth=1, heads=2, mlp=24).double()
        x = torch.randn(12, 1, 8, 8, dtype=torch.float64)
    fuse([mk(), mk()], anchor=1, calib_data=x, solver='sinkhorn', reg=0.1, num_iter_max=777, tol=1e-6, **opts)
    assert calls and all(c[1:] == (777, 1e-6) for c in calls), calls
    if opts.get('qk') == 'tied' or opts.get('per_head'): assert any(c[0] == 'transport_map' for c in calls)

def test_uniform_fusion_averages_with_the_mean_neuron():
    """solver='uniform': every map is 1/(n_A n_B); a fused weight whose outputs are aligned is ½ W_B + ½ (mean over A's
    output neurons of W_A R), R the uniform row map of its input; Sinkhorn at a huge λ gives nearly the same model"""
    torch.manual_seed(1)
    a, b = ViT(d=16, depth=2, heads=4, mlp=32).double(), ViT(d=16, depth=2, heads=4, mlp=32).double()
    x = torch.randn(20, 1, 8, 8, dtype=torch.float64)
    f = fuse([a, b], anchor=1, calib_data=x, solver='uniform')
    _, maps = align(a, b, x, solver='uniform', return_maps=True)
    assert all(torch.allclose(m.P, torch.full_like(m.P, 1 / m.P.numel()), rtol=1e-12) for m in maps.values())
    sa, sb, sf = a.state_dict(), b.state_dict(), f.state_dict()
    R16, R32 = torch.full((16, 16), 1 / 16, dtype=torch.float64), torch.full((32, 32), 1 / 32, dtype=torch.float64)
    for k, R in (('blocks.0.fc1', R16), ('blocks.1.fc2', R32), ('blocks.1.attn.v', R16), ('blocks.0.attn.o', R16)):
        W = sa[f"{k}.weight"] @ R
        torch.testing.assert_close(sf[f"{k}.weight"], 0.5 * sb[f"{k}.weight"] + 0.5 * W.mean(0, keepdim=True).expand_as(W), rtol=0, atol=1e-12)
        torch.testing.assert_close(sf[f"{k}.bias"], 0.5 * sb[f"{k}.bias"] + 0.5 * sa[f"{k}.bias"].mean(), rtol=0, atol=1e-12)
    g = fuse([a, b], anchor=1, calib_data=x, solver='sinkhorn', reg=1e5)
    assert max((g.state_dict()[k] - v).abs().max().item() for k, v in sf.items()) < 1e-4

# CPU fusions are the fusions of the package before the `device` option (issue 22): digests of the fused parameters
# (and of one set of Sinkhorn maps) stored from that version, equal to the last bit on the machine that stored them
# (with 1 or 2 threads). The tolerance, 1e-12 of the absolute sum, leaves room for another BLAS's rounding and none for a
# change of method or precision.
def _weights(n:int) -> torch.Tensor:
    "Fixed weights in [-1, 1], exact in every arithmetic: ((7919 i) mod 101 - 50) / 50"
    return ((torch.arange(n, dtype=torch.float64) * 7919) % 101 - 50) / 50

def _digest(sd) -> tuple:
    "A fixed weighted sum of every floating-point entry and the sum of their absolute values, both summed exactly (math.fsum)"
    v = torch.cat([t.detach().double().flatten().cpu() for t in sd.values() if t.is_floating_point()])
    return math.fsum((v * _weights(len(v))).tolist()), math.fsum(v.abs().tolist())

FUSION_REFERENCE = {
    'vit_emd': (-2.245423473514384, 1244.3947201132542),
    'vit_sinkhorn': (-3.5113367874536197, 1061.4247628237063),
    'vit_sinkhorn_log': (-2.955696221832185, 1177.6309360315208),
    'vit_uniform': (-4.161092118054221, 1008.2988866756787),
    'vit_tokens': (1.0966760544650607, 1324.3138003797067),
    'vit_per_head': (-2.5390146646418725, 1043.4629730681627),
    'vit_wts': (1.1105419787490969, 1501.1091609937575),
    'vit_three': (2.6329479817959602, 1155.3470465093703),
    'vit_align_maps': (-0.03971860531275001, 9.0),
    'bert_emd': (24.873500696814258, 1574.2226642341673),
    'bert_sinkhorn_tied': (15.436138097571192, 1273.190316683431),
}

@pytest.fixture(scope='module')
def reference_cases():
    "The fusions of FUSION_REFERENCE: float32 ViTs (trained models' dtype) under several options, and float64 BERTs with padding"
    torch.manual_seed(11)
    va, vb, vc = (ViT(d=32, depth=2, heads=4, mlp=96) for _ in range(3))
    x = torch.randn(48, 1, 8, 8)
    ba, bb = (BERT(vocab_size=40, max_len=10, d=24, depth=2, heads=4, mlp=48).double() for _ in range(2))
    ids = torch.randint(1, 40, (32, 10)); ids[:5, 6:] = 0
    vit = lambda **o: lambda: fuse([va, vb], anchor=1, calib_data=x, **o).state_dict()
    return {'vit_emd': vit(), 'vit_sinkhorn': vit(solver='sinkhorn', reg=0.05), 'vit_sinkhorn_log': vit(solver='sinkhorn', reg=0.004),
            'vit_uniform': vit(solver='uniform'), 'vit_tokens': vit(tokens='window2+cls_last', resid_policy='no_resid'),
            'vit_per_head': vit(per_head=True, solver='sinkhorn', reg=0.08), 'vit_wts': vit(cost='wts', resid_policy='identity'),
            'vit_three': lambda: fuse([va, vb, vc], calib_data=x, weights=(0.5, 0.3, 0.2), max_points=300).state_dict(),
            'vit_align_maps': lambda: {k: m.P for k, m in align(va, vb, x, solver='sinkhorn', reg=0.02, return_maps=True)[1].items()},
            'bert_emd': lambda: fuse([ba, bb], calib_data=ids).state_dict(),
            'bert_sinkhorn_tied': lambda: fuse([ba, bb], calib_data=ids, solver='sinkhorn', reg=0.05, qk='tied').state_dict(),
            'models': (va, vb, x)}

@pytest.mark.parametrize('name', list(FUSION_REFERENCE))
def test_cpu_fusion_is_unchanged_by_the_device_option(name, reference_cases):
    (d0, d1), (r0, r1) = _digest(reference_cases[name]()), FUSION_REFERENCE[name]
    assert abs(d0 - r0) <= 1e-12 * r1 and abs(d1 - r1) <= 1e-12 * r1, (name, (d0, d1), (r0, r1))

def test_an_explicit_cpu_device_is_the_default_here(reference_cases):
    "device='cpu' computes what the default does on this machine, bit for bit, moves nothing and times no transfer"
    va, vb, x = reference_cases['models']
    tm = {}
    f = fuse([va, vb], anchor=1, calib_data=x, device='cpu', timings=tm).state_dict()
    ref = reference_cases['vit_emd']()
    for k, v in ref.items(): assert torch.equal(f[k], v), k
    assert sorted(tm) == ['activations', 'costs', 'solves', 'weights']
    assert all(p.device.type == 'cpu' for p in va.parameters())            # the caller's models are where they were

def test_inputs_on_two_devices_are_one_clear_error():
    "Parents on different devices, or data elsewhere than the models: one ValueError naming each ('meta' stands in for a GPU)"
    import copy
    from cl_scale.fusion import model_output
    from cl_scale.alignment import layer_diagnostics
    torch.manual_seed(0)
    a, b, x = ViT(d=16, depth=1, heads=2, mlp=24), ViT(d=16, depth=1, heads=2, mlp=24), torch.randn(6, 1, 8, 8)
    m = copy.deepcopy(b).to('meta')
    for f, msg in ((lambda: fuse([a, m, b], calib_data=x), 'fuse: model 0 on cpu, model 1 on meta, model 2 on cpu, calib_data on cpu'),
                   (lambda: fuse([a, b], calib_data=x.to('meta')), 'calib_data on meta'),
                   (lambda: align(m, b, x), 'align: model on meta, anchor on cpu'),
                   (lambda: layer_diagnostics(a, b, x.to('meta')), 'layer_diagnostics: model on cpu, anchor on cpu, calib_data on meta'),
                   (lambda: model_output(a, {'x': x.to('meta')}), "data['x'] on meta")):
        with pytest.raises(ValueError, match='must be on one device') as e: f()
        assert msg in str(e.value), str(e.value)
    bert = BERT(vocab_size=20, max_len=6, d=16, depth=1, heads=2, mlp=24)
    with pytest.raises(ValueError, match="calib_data on meta"): fuse([bert, bert], calib_data=torch.randint(1, 20, (4, 6)).to('meta'))

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_a_missing_device_fails_before_any_work(monkeypatch):
    "device='cuda' without a GPU: a DeviceError (a ValueError) naming it and what there is, before anything is recorded"
    import cl_scale.fusion as F
    from cl_scale.device import DeviceError
    monkeypatch.setattr(F, 'collect_activations', lambda *a, **k: pytest.fail('recorded before the device was resolved'))
    a = ViT(d=16, depth=1, heads=2, mlp=24)
    for f in (lambda: fuse([a, a], calib_data=torch.randn(4, 1, 8, 8), device='cuda'), lambda: align(a, a, torch.randn(4, 1, 8, 8), device='cuda:1')):
        with pytest.raises(DeviceError, match=r"device 'cuda(:1)?' was asked for.*available here: cpu"): f()

def test_mps_has_no_float64_for_fusion(monkeypatch):
    "Where 'auto' would be Apple's MPS (no float64), a fusion computes on the CPU; asking for 'mps' is a DeviceError saying why"
    import cl_scale.fusion as F
    from cl_scale.device import DeviceError
    monkeypatch.setattr(F, 'resolve_device', lambda device='auto': torch.device('mps'))      # a Mac, seen from here
    assert F.fusion_device('auto') == torch.device('cpu') and F.fusion_device(None) == torch.device('cpu')
    with pytest.raises(DeviceError, match="device 'mps': fusion computes .* in float64, which MPS does not have"): F.fusion_device('mps')
