"""Checks of `cl_scale.fusion` beyond the notebook: permutation recovery over many random permutations and model
shapes (hypothesis), weight-based recovery, heterogeneous BERT fusion in both directions, and the fast cost path
(input Gram matrices, matrix-product distances) against a plain computation of the definition."""
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
