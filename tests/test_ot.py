"""Property-based and edge-case checks of `cl_scale.ot` that would clutter the notebook.

hypothesis draws sizes, point clouds, masses and regularisations, so the guarantees stated in `nbs/20_ot.ipynb`
(non-negative plans with the right marginals, EMD never costlier than Sinkhorn, a warning exactly when `tol` is
missed, exact symmetric costs, matrix-product distances that match exact differences, normalised maps) are checked far from the few examples the notebook shows.
The Sinkhorn solver (sweeps, then Newton when they converge slowly) is checked against POT's Sinkhorn run to
convergence, on the near-permutation and small-λ costs that made the sweeps slow, and the uniform plan against
Sinkhorn's large-λ limit. CPU plans and costs are compared with values stored from the version before the `device`
option (issue 22), and plans stay on their cost's device."""
import math, time, warnings
import numpy as np
import pytest
import torch, ot
from hypothesis import given, settings, assume, strategies as st
import cl_scale.ot as clot
from cl_scale.ot import *
from cl_scale.ot import _denormals_flushed, _sinkhorn

f64 = torch.float64

def _solve(C, solver, **kw):
    "ot_plan, returning the plan and whether it warned (any other warning fails the test)"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        P = ot_plan(C, solver, **kw)
    assert all(issubclass(w.category, OTConvergenceWarning) for w in caught), [str(w.message) for w in caught]
    return P, bool(caught)

@st.composite
def clouds(draw, max_n=12, max_d=6):
    "Two point clouds (n_A, d) and (n_B, d) from a seed, at a drawn spread"
    na, nb, d = draw(st.integers(1, max_n)), draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    return scale * torch.randn(na, d, generator=g, dtype=f64), scale * torch.randn(nb, d, generator=g, dtype=f64)

@st.composite
def masses(draw, n, zeros=True):
    w = np.array(draw(st.lists(st.floats(0.0 if zeros else 0.05, 1.0), min_size=n, max_size=n)))
    assume(w.sum() > 0.05)
    return torch.tensor(w / w.sum(), dtype=f64)

@settings(max_examples=60, deadline=None)
@given(data=st.data(), solver=st.sampled_from(SOLVERS), reg=st.sampled_from([0.003, 0.02, 0.05, 0.3, 2.0]))
def test_plans_are_nonnegative_with_marginals(data, solver, reg):
    xa, xb = data.draw(clouds())
    a = data.draw(masses(len(xa))) if data.draw(st.booleans()) else None
    b = data.draw(masses(len(xb))) if data.draw(st.booleans()) else None
    C = cost_matrix(xa, xb)
    P, warned = _solve(C, solver, reg=reg, a=a, b=b, num_iter_max=3000)
    assert P.dtype == f64 and P.shape == C.shape and torch.isfinite(P).all() and (P >= 0).all()
    err = marginal_error(P, a, b)
    assert warned == (err > 1e-7)                     # a warning exactly when the marginals miss tol
    if solver == 'emd': assert not warned and err < 1e-12
    am = torch.full((len(xa),), 1 / len(xa), dtype=f64) if a is None else a
    bm = torch.full((len(xb),), 1 / len(xb), dtype=f64) if b is None else b
    assert (P.sum(1) - am).abs().max() <= err + 1e-15 and (P.sum(0) - bm).abs().max() <= err + 1e-15
    assert (P[am == 0] == 0).all() and (P[:, bm == 0] == 0).all()   # zero mass: nothing transported

@settings(max_examples=60, deadline=None)
@given(data=st.data(), reg=st.sampled_from([0.01, 0.03, 0.1, 0.5]))
def test_emd_is_never_costlier_than_sinkhorn(data, reg):
    xa, xb = data.draw(clouds())
    C = cost_matrix(xa, xb)
    Pe, _ = _solve(C, 'emd')
    Ps, _ = _solve(C, 'sinkhorn', reg=reg, num_iter_max=5000)
    # the Sinkhorn plan is feasible only up to its marginal error, which can lower its cost by at most that much mass × max C
    slack = (len(xa) + len(xb)) * marginal_error(Ps) * C.max().item() + 1e-12
    assert (Pe * C).sum() <= (Ps * C).sum() + slack
    # and the entropic gap is bounded by reg·log(n_A·n_B)
    assert (Ps * C).sum() - (Pe * C).sum() <= reg * math.log(len(xa) * len(xb)) + slack

@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 30), seed=st.integers(0, 2**31 - 1), noise=st.sampled_from([0.0, 1e-9, 1e-4]))
def test_emd_recovers_a_permutation(n, d, seed, noise):
    g = torch.Generator().manual_seed(seed)
    xa = torch.randn(n, d, generator=g, dtype=f64)
    assume(n == 1 or torch.pdist(xa).min() > 1e-2)      # distinct neurons, so the matching is unique
    perm = torch.randperm(n, generator=g)
    tm = transport_map(xa, xa[perm] + noise * torch.randn(n, d, generator=g, dtype=f64))
    assert tm.is_permutation() and torch.equal(tm.rows.argmax(0), perm) and torch.equal(tm.cols.argmax(0), perm)
    assert tm.sharpness == pytest.approx(1.0, abs=1e-12)

@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_cost_matrix_of_a_cloud_with_itself(data):
    xa, _ = data.draw(clouds(max_n=30, max_d=40))
    if data.draw(st.booleans()): xa = torch.cat([xa, xa[:3]])      # duplicated neurons
    C = cost_matrix(xa, xa)
    assert C.dtype == f64 and torch.equal(C, C.T)
    assert (C.diagonal() == 0).all() and C.min() >= 0 and C.max() <= 1
    assert C.max() == 1 or (C == 0).all()
    raw = cost_matrix(xa, xa, normalize=None)
    assert torch.allclose(raw, (xa[:, None] - xa[None]).norm(dim=-1), rtol=1e-9, atol=1e-12 * raw.max().item())

@settings(max_examples=40, deadline=None)
@given(data=st.data(), shift=st.floats(-100, 100), scale=st.floats(1e-3, 1e3))
def test_cost_matrix_is_invariant_to_shifts_and_scales(data, shift, scale):
    xa, xb = data.draw(clouds())
    C = cost_matrix(xa, xb)
    assert torch.allclose(cost_matrix(scale * xa, scale * xb), C, atol=1e-9)
    spread = max(xa.abs().max().item(), xb.abs().max().item())
    assume(abs(shift) < 1e3 * spread)                 # a huge shift would swamp the points in rounding
    assert torch.allclose(cost_matrix(xa + shift, xb + shift), C, atol=1e-6)

def test_cost_matrix_is_exact_for_coincident_points():
    "A neuron and its exact copy are at distance 0, not cdist's ~1e-6, in a wide cloud"
    g = torch.Generator().manual_seed(0)
    x = standardize(torch.randn(300, 3000, generator=g, dtype=f64))
    assert torch.cdist(x, x).diagonal().abs().max() > 0                  # what the fast path alone gives
    y = x.clone(); y[5] += 1e-7                                          # and a near copy keeps its tiny distance
    C = cost_matrix(x, y, normalize=None)
    assert C.diagonal()[torch.arange(300) != 5].abs().max() == 0
    assert C[5, 5].item() == pytest.approx(1e-7 * math.sqrt(3000), rel=1e-6)

@settings(max_examples=30, deadline=None)
@given(na=st.integers(26, 70), nb=st.integers(1, 70), d=st.integers(1, 400), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([1e-3, 1.0, 1e3]), dup=st.booleans())
def test_matrix_product_distances_match_differences(na, nb, d, seed, scale, dup):
    "Beyond 25 points the distances come from one matrix product; they match exact differences (near-zero ones exactly)"
    g = torch.Generator().manual_seed(seed)
    xa, xb = scale * torch.randn(na, d, generator=g, dtype=f64), scale * torch.randn(nb, d, generator=g, dtype=f64)
    if dup: xb[0] = xa[3]                                                # a coincident pair
    raw = cost_matrix(xa, xb, normalize=None)
    exact = torch.cdist(xa, xb, compute_mode='donot_use_mm_for_euclid_dist')
    assert torch.allclose(raw, exact, rtol=1e-7, atol=1e-12 * scale)
    if dup: assert raw[3, 0] == 0
    assert torch.allclose(cost_matrix(xa.T.contiguous().T, xb), cost_matrix(xa, xb), rtol=1e-7, atol=1e-12)   # nor the layout

def test_checks_on_large_inputs():
    "Finiteness is checked through the row means (standardize) and squared norms (cost_matrix): still caught and counted"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2000, generator=g)
    x[17, 1234], x[200, 5] = float('nan'), float('-inf')
    with pytest.raises(ValueError, match='acts has 2 NaN or infinite entries'): standardize(x)
    with pytest.raises(ValueError, match='xb has 2 NaN or infinite entries'): cost_matrix(torch.randn(300, 2000, generator=g), x)
    with pytest.raises(ValueError, match='too large'): cost_matrix(torch.full((30, 3), 1e200, dtype=f64), torch.ones(30, 3))

def test_standardize_matches_the_formula_on_recorded_layouts():
    "float32 activations in the (features, neurons).T layout the hooks record: the textbook formula in float64"
    g = torch.Generator().manual_seed(1)
    rec = 3 * torch.randn(5000, 64, generator=g) + torch.randn(64, generator=g)       # (samples·tokens, neurons)
    x = rec.T.double()
    ref = (x - x.mean(1, keepdim=True)) / (x.std(1, correction=0, keepdim=True) + 1e-9)
    z = standardize(rec.T)
    assert z.dtype == f64 and z.is_contiguous() and torch.allclose(z, ref, rtol=0, atol=1e-12)

@settings(max_examples=60, deadline=None)
@given(na=st.integers(1, 9), nb=st.integers(1, 9), seed=st.integers(0, 2**31 - 1), zero_frac=st.floats(0, 0.7))
def test_row_and_col_maps_are_normalised(na, nb, seed, zero_frac):
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(na, nb, generator=g, dtype=f64) * (torch.rand(na, nb, generator=g, dtype=f64) > zero_frac)
    R, Q = row_map(P), col_map(P)
    rs, cs = P.sum(1) > 0, P.sum(0) > 0
    assert torch.isfinite(R).all() and torch.isfinite(Q).all()
    assert torch.allclose(R.sum(1)[rs], torch.ones(int(rs.sum()), dtype=f64)) and (R[~rs] == 0).all()
    assert torch.allclose(Q.sum(0)[cs], torch.ones(int(cs.sum()), dtype=f64)) and (Q[:, ~cs] == 0).all()
    assert torch.equal(row_map(TransportMap(P, 'emd')), R) and torch.equal(TransportMap(P, 'emd').cols, Q)

@settings(max_examples=40, deadline=None)
@given(na=st.integers(1, 12), nb=st.integers(1, 12), seed=st.integers(0, 2**31 - 1), solver=st.sampled_from(SOLVERS))
def test_rectangular_maps_versus_otfusion_scaling(na, nb, seed, solver):
    g = torch.Generator().manual_seed(seed)
    tm = transport_map(torch.randn(na, 3, generator=g), torch.randn(nb, 3, generator=g), solver, reg=0.1)
    assert tm.shape == (na, nb)
    assert torch.allclose(tm.rows, na * tm.P, atol=1e-5) and torch.allclose(tm.cols, nb * tm.P, atol=1e-5)
    assert torch.allclose((na * tm.P).sum(0), torch.full((nb,), na / nb, dtype=f64), atol=1e-5)  # OTFusion's T
    assert tm.is_permutation() == (na == nb and (solver == 'emd' or na == 1))

@settings(max_examples=40, deadline=None)
@given(acts=st.integers(0, 2**31 - 1), n=st.integers(1, 10), d=st.integers(2, 50),
       scale=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3))
def test_standardize_is_affine_invariant(acts, n, d, scale, shift):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(acts), dtype=f64)
    z = standardize(x)
    assert torch.allclose(z.mean(1), torch.zeros(n, dtype=f64), atol=1e-12)
    assert torch.allclose(z.pow(2).mean(1), torch.ones(n, dtype=f64), atol=1e-6)
    # equal up to the 1e-9 added to the standard deviation, which matters for rows of tiny spread
    sd = scale * x.std(1, correction=0).min().item()
    assert torch.allclose(standardize(scale * x + shift), z, atol=1e-6 + 2e-9 / sd * z.abs().max().item())

@settings(max_examples=40, deadline=None)
@given(k=st.integers(1, 5), n=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), uniform=st.booleans())
def test_mixed_maps_keep_their_marginals(k, n, seed, uniform):
    g = torch.Generator().manual_seed(seed)
    maps = [transport_map(torch.randn(n, 2, generator=g), torch.randn(n, 2, generator=g)) for _ in range(k)]
    w = None if uniform else torch.rand(k, generator=g, dtype=f64) + 0.01
    m = mix_maps(maps, None if w is None else w / w.sum())
    assert m.solver == 'mixed' and m.shape == (n, n) and marginal_error(m.P) < 1e-12
    ww = torch.full((k,), 1 / k, dtype=f64) if w is None else w / w.sum()
    assert torch.allclose(m.P, sum(wi * mp.P for wi, mp in zip(ww, maps)), atol=1e-15)
    assert mix_maps([identity_map(n)] * k).is_permutation()

# --- Numerics and failure paths ---

def _gaussian_cost(n=64, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return cost_matrix(torch.randn(n, d, generator=g, dtype=f64), torch.randn(n, d, generator=g, dtype=f64))

def test_plain_sinkhorn_falls_back_to_the_log_domain(monkeypatch):
    "If a plain sweep under- or overflows (here forced by moving the threshold: whole kernel rows underflow), the solve is redone in logs"
    C = _gaussian_cost()
    monkeypatch.setattr(clot, 'LOG_DOMAIN_BELOW', 1e-6)
    u = torch.full((64,), 1 / 64, dtype=f64)
    assert not torch.exp(-(C - C.min()) / 1e-4).sum(1).min() > 0                  # the plain kernel has an empty row
    P, method, its, stalled = _sinkhorn(u, u, C, 1e-4, 1000, 1e-7)
    assert method.startswith('log domain') and not stalled
    P, warned = _solve(C, 'sinkhorn', reg=1e-4, num_iter_max=1000)
    assert torch.isfinite(P).all() and marginal_error(P) <= 1e-7 and not warned

@pytest.mark.parametrize('before', [False, True])
def test_denormal_flag_is_restored(before):
    C = _gaussian_cost(16, 4)
    torch.set_flush_denormal(before)
    try:
        assert _denormals_flushed() == before
        for reg in (0.001, 0.05): _solve(C, 'sinkhorn', reg=reg, num_iter_max=50)
        assert _denormals_flushed() == before
    finally: torch.set_flush_denormal(False)

@pytest.mark.parametrize('solver', ['emd', 'sinkhorn'])
def test_a_non_finite_plan_is_never_returned(monkeypatch, solver):
    if solver == 'emd':
        nan = lambda a, b, M, *args, **kw: (torch.full(M.shape, float('nan'), dtype=f64), {'niter': 1, 'result_code': 1, 'warning': None})
        monkeypatch.setattr(clot.ot, 'emd', nan)
    else: monkeypatch.setattr(clot, '_sinkhorn', lambda a, b, C, *args: (torch.full(C.shape, float('nan'), dtype=f64), 'plain', 1, False))
    with pytest.raises(ValueError, match='NaN or infinite'):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            ot_plan(_gaussian_cost(8, 3), solver, reg=0.05, num_iter_max=10**5)   # a budget: POT's solver, even when square

def test_non_convergence_warns():
    with pytest.warns(OTConvergenceWarning, match=r'Sinkhorn \(log domain, reg=0.001\).*marginal error.*raise num_iter_max or reg.*fuse'):
        ot_plan(_gaussian_cost(32, 8), 'sinkhorn', reg=0.001, num_iter_max=2)
    with pytest.warns(OTConvergenceWarning, match=r'EMD stopped before optimality.*raise num_iter_max'):
        ot_plan(_gaussian_cost(32, 8), 'emd', num_iter_max=5)

def test_other_pot_warnings_pass_through(monkeypatch):
    "Warnings of POT's network simplex that are not about convergence are not swallowed"
    real = clot.ot.emd
    def noisy(*args, **kw):
        warnings.warn('something else', DeprecationWarning)
        return real(*args, **kw)
    monkeypatch.setattr(clot.ot, 'emd', noisy)
    with pytest.warns(DeprecationWarning, match='something else'):
        ot_plan(_gaussian_cost(8, 3), 'emd', num_iter_max=10**5)      # a budget: POT's network simplex

def test_inputs_of_other_types():
    "numpy arrays, nested lists and float32 tensors are accepted; results are float64"
    x = np.random.default_rng(0).normal(size=(6, 3))
    assert cost_matrix(x, x.tolist()).dtype == f64
    P = ot_plan(cost_matrix(x, x).float(), a=np.full(6, 1 / 6, dtype=np.float32), b=[1 / 6] * 6)
    assert P.dtype == f64 and TransportMap(P, 'emd').is_permutation()

@pytest.mark.parametrize('call, match', [
    (lambda C: ot_plan(C, 'greedy'), "unknown solver 'greedy'"),
    (lambda C: ot_plan(C, 'sinkhorn', reg=0), 'reg must be a positive'),
    (lambda C: ot_plan(C, 'sinkhorn', reg=True), 'reg must be a positive'),
    (lambda C: ot_plan(C, 'sinkhorn', reg=float('inf')), 'reg must be a positive'),
    (lambda C: ot_plan(C, 'uniform', tol=0), 'tol must be a positive'),
    (lambda C: ot_plan(C[:, :0], 'uniform'), 'at least one row and one column'),
    (lambda C: ot_plan(C, a=torch.full((4,), 0.3)), 'a must sum to 1'),
    (lambda C: ot_plan(C, b=[0.5, 0.5]), 'b must be a 1-D vector of 5 masses'),
    (lambda C: ot_plan(C, a=[1.0, 0.0, 0.5, -0.5]), 'a has negative masses'),
    (lambda C: ot_plan(C, a=[1.0, 0.0, float('nan'), 0.0]), 'NaN or infinite'),
    (lambda C: ot_plan(C[None]), 'C must be a 2-D cost matrix'),
    (lambda C: ot_plan(C[0]), 'C must be a 2-D cost matrix'),
    (lambda C: ot_plan(C, num_iter_max=2.5), 'num_iter_max must be a positive integer'),
    (lambda C: transport_map(C, C[:, :2]), 'same number of features'),
    (lambda C: mix_maps([C, C.T]), 'same shape'),
    (lambda C: identity_map(2.0), 'positive integer'),
    (lambda C: TransportMap(C[0], 'emd'), 'must be 2-D'),
])
def test_bad_input(call, match):
    C = torch.rand(4, 5, dtype=f64)
    with pytest.raises(ValueError, match=match): call(C)

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), d=st.integers(1, 8), seed=st.integers(0, 2**31 - 1), ties=st.booleans())
def test_square_uniform_emd_is_the_network_simplex_optimum(n, d, seed, ties):
    "Equal widths and uniform masses: the assignment solver's plan is 1/n × a permutation, as cheap as POT's network simplex"
    g = torch.Generator().manual_seed(seed)
    xa, xb = torch.randn(n, d, generator=g, dtype=f64), torch.randn(n, d, generator=g, dtype=f64)
    if ties: xa, xb = xa.round(), xb.round()                  # many equal costs: several optimal plans
    C = cost_matrix(xa, xb)
    P, warned = _solve(C, 'emd')
    Q, _ = _solve(C, 'emd', num_iter_max=10**7)               # an explicit budget: POT's network simplex
    assert not warned and TransportMap(P, "emd").is_permutation()
    assert (P * C).sum().item() == pytest.approx((Q * C).sum().item(), abs=1e-12)
    if not ties and d > 1: assert torch.equal(P, Q)         # a unique optimum (almost surely; in 1-D |x - y| ties often)
    assert torch.equal(ot_plan(C, a=torch.full((n,), 1 / n, dtype=f64)), P)   # uniform masses given explicitly: the same

# --- Sinkhorn: sweeps and the Newton finish, against POT run to convergence ---

U = lambda n: torch.full((n,), 1 / n, dtype=f64)

def _pot_converged(C, a, b, reg):
    "POT's log-domain Sinkhorn run to a marginal error below 1e-12, or None if it does not get there in 20 000 iterations"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        R = ot.sinkhorn(a, b, C, reg, method='sinkhorn_log', numItermax=20_000, stopThr=1e-13)
    return R if marginal_error(R, a, b) < 1e-12 else None

@st.composite
def structured_costs(draw):
    "A cost between unrelated clouds, or a permuted (noisy) copy, which has (near-)zeros on a permutation"
    n, m, d = draw(st.integers(1, 12)), draw(st.integers(1, 12)), draw(st.integers(1, 16))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    xa = torch.randn(n, d, generator=g, dtype=f64)
    if draw(st.booleans()):
        noise = draw(st.sampled_from([0.0, 0.05, 0.3]))
        return cost_matrix(xa, xa[torch.randperm(n, generator=g)] + noise * torch.randn(n, d, generator=g, dtype=f64))
    return cost_matrix(xa, torch.randn(m, d, generator=g, dtype=f64))

@settings(max_examples=60, deadline=None)
@given(data=st.data(), C=structured_costs(), reg=st.sampled_from([0.005, 0.02, 0.08, 0.3]),
       tol=st.sampled_from([1e-7, 1e-10]))
def test_sinkhorn_matches_pots_converged_plan(data, C, reg, tol):
    "The plan meets `tol` (no warning) and, where POT's Sinkhorn converges, equals its plan to 1e-6 in max-abs"
    a = data.draw(masses(C.shape[0], zeros=False)) if data.draw(st.booleans()) else U(C.shape[0])
    b = data.draw(masses(C.shape[1], zeros=False)) if data.draw(st.booleans()) else U(C.shape[1])
    P, warned = _solve(C, 'sinkhorn', reg=reg, a=a, b=b, tol=tol)
    assert not warned and marginal_error(P, a, b) <= tol and (P >= 0).all()
    R = _pot_converged(C, a, b, reg)
    if R is not None: assert (P - R).abs().max().item() <= 1e-6

@pytest.mark.parametrize('reg', [0.005, 0.02, 0.04, 0.08, 0.3])
@pytest.mark.parametrize('kind', ['permuted copy', 'unrelated'])
def test_the_slow_cases_take_few_iterations(kind, reg):
    """128 neurons, as in a fusion: a shuffled noisy copy (a near-permutation plan: σ₂ ≈ 1 at moderate λ) or unrelated
    neurons (weakly coupled blocks at small λ). Sweeps plus Newton stay under 100 iterations; POT's Sinkhorn needs far
    more where the rate is bad (checked at λ = 0.04 on the copy)"""
    g = torch.Generator().manual_seed(1)
    xa = standardize(torch.randn(128, 300, generator=g, dtype=f64))
    xb = (standardize(xa[torch.randperm(128, generator=g)] + 0.5 * torch.randn(128, 300, generator=g, dtype=f64))
          if kind == 'permuted copy' else standardize(torch.randn(128, 300, generator=g, dtype=f64)))
    C = cost_matrix(xa, xb)
    P, method, its, stalled = _sinkhorn(U(128), U(128), C, reg, SINKHORN_NUM_ITER_MAX, 1e-7)
    assert its < 100 and not stalled and marginal_error(P) <= 1e-7
    if kind == 'permuted copy' and reg == 0.04:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            _, log = ot.sinkhorn(U(128), U(128), C, reg, numItermax=20_000, stopThr=1e-7, log=True)
        assert log['niter'] > 10 * its, (log['niter'], its)

def test_newton_stops_at_the_rounding_floor():
    "A tol below float64's rounding of the masses cannot be met: Newton stops there and the warning says to loosen tol"
    C = _gaussian_cost(32, 8)
    with pytest.warns(OTConvergenceWarning, match='loosen tol'):
        P = ot_plan(C, 'sinkhorn', reg=0.02, tol=1e-20)
    assert marginal_error(P) < 1e-15
    P, method, its, stalled = _sinkhorn(U(32), U(32), C, 0.02, SINKHORN_NUM_ITER_MAX, 1e-20)
    assert stalled and method.endswith('+ Newton') and its < 100

@settings(max_examples=30, deadline=None)
@given(n_iter=st.integers(1, 30), reg=st.sampled_from([0.001, 0.005, 0.05]))
def test_the_budget_counts_sweeps_and_newton_steps(n_iter, reg):
    "num_iter_max bounds sweeps plus Newton steps; a plan that misses tol within it warns with the count"
    C = _gaussian_cost(24, 6, seed=3)
    P, method, its, _ = _sinkhorn(U(24), U(24), C, reg, n_iter, 1e-7)
    assert its <= n_iter
    P, warned = _solve(C, 'sinkhorn', reg=reg, num_iter_max=n_iter)
    assert warned == (marginal_error(P) > 1e-7)

@settings(max_examples=40, deadline=None)
@given(data=st.data(), reg=st.sampled_from([10.0, 100.0, 1000.0]))
def test_sinkhorn_tends_to_the_uniform_plan(data, reg):
    "P_λ / (a bᵀ) − 1 is about minus the doubly centred cost over λ (at most 2 on a cost in [0, 1]): within 3/λ"
    xa, xb = data.draw(clouds())
    a = data.draw(masses(len(xa), zeros=False)); b = data.draw(masses(len(xb), zeros=False))
    C = cost_matrix(xa, xb)
    Uab, _ = _solve(C, 'uniform', a=a, b=b)
    assert torch.allclose(Uab, a[:, None] * b[None], rtol=1e-14, atol=0) and marginal_error(Uab, a, b) < 1e-15
    P, warned = _solve(C, 'sinkhorn', reg=reg, a=a, b=b)
    assert not warned and (P / Uab - 1).abs().max().item() <= 3 / reg

def test_uniform_plan_maps():
    "The uniform map spreads every neuron evenly: rows 1/n_B, columns 1/n_A, sharpness 1/n_B, labelled 'uniform'"
    tm = transport_map(torch.randn(6, 3), torch.randn(4, 3), 'uniform', reg=None)
    assert tm.solver == 'uniform' and tm.reg is None and repr(tm) == 'TransportMap(uniform, 6×4)'
    assert torch.equal(tm.rows, torch.full((6, 4), 0.25, dtype=f64)) and torch.allclose(tm.cols, torch.full((6, 4), 1 / 6, dtype=f64))
    assert tm.sharpness == pytest.approx(0.25) and not tm.is_permutation()

# CPU plans are the plans of the package before the `device` option (issue 22): digests of the plans and costs below,
# stored from that version. They were equal to the last bit on the machine that stored them (with 1 or 2 threads);
# the tolerance, 1e-12 of the absolute sum, leaves room for another BLAS's rounding, and none for a change of method or
# precision (a float32 cost moves a plan's digest by ~1e-8).
def _weights(n:int) -> torch.Tensor:
    "Fixed weights in [-1, 1], exact in every arithmetic: ((7919 i) mod 101 - 50) / 50"
    return ((torch.arange(n, dtype=torch.float64) * 7919) % 101 - 50) / 50

def _digest(t) -> tuple:
    "A fixed weighted sum of every entry and the sum of their absolute values, both summed exactly (math.fsum)"
    v = t.detach().double().flatten().cpu()
    return math.fsum((v * _weights(len(v))).tolist()), math.fsum(v.abs().tolist())

OT_REFERENCE = {
    'cost': (-0.5666597669396359, 1935.803730085784),
    'emd_simplex': (0.07766666666666666, 0.9999999999999999),
    'emd_assignment': (0.091, 1.0),
    'emd_masses': (0.08988247850301602, 0.9999999999999999),
    'sinkhorn_plain': (0.014501933957739375, 1.0),
    'sinkhorn_newton': (0.09100000146011583, 1.0),
    'sinkhorn_log': (0.07610750690072562, 1.0000000000000004),
    'sinkhorn_masses': (0.015985828427721224, 1.0000000000000002),
    'uniform': (-0.00014074074074074076, 1.0),
    'activation_cost_f32': (-1.8995920540046882, 1883.9294217784802),
    'via_inputs_f32': (-1.2841295685756398, 703.0750009413398),
    'transport_map': (0.00031692632094921657, 1.0),
}

def _ot_cases() -> dict:
    "The plans and costs of OT_REFERENCE: exact (network simplex, assignment, masses with a zero), Sinkhorn (plain, Newton, log domain, masses), uniform, float32 costs"
    g = torch.Generator().manual_seed(21)
    xa, xb = torch.randn(60, 40, generator=g, dtype=f64), torch.randn(45, 40, generator=g, dtype=f64)
    C, Cs = cost_matrix(xa, xb), cost_matrix(xa, xa[torch.randperm(60, generator=g)] + 0.3 * torch.randn(60, 40, generator=g, dtype=f64))
    a = torch.rand(60, generator=g, dtype=f64); a[3] = 0; a /= a.sum()
    ya, yb = torch.randn(50, 900, generator=g), torch.randn(40, 900, generator=g)
    wa, wb = torch.randn(30, 20, generator=g), torch.randn(25, 20, generator=g)
    return {'cost': lambda: C, 'emd_simplex': lambda: ot_plan(C), 'emd_assignment': lambda: ot_plan(Cs), 'emd_masses': lambda: ot_plan(C, a=a),
            'sinkhorn_plain': lambda: ot_plan(C, 'sinkhorn', reg=0.05), 'sinkhorn_newton': lambda: ot_plan(Cs, 'sinkhorn', reg=0.02),
            'sinkhorn_log': lambda: ot_plan(C, 'sinkhorn', reg=0.003), 'sinkhorn_masses': lambda: ot_plan(C, 'sinkhorn', reg=0.05, a=a),
            'uniform': lambda: ot_plan(C, 'uniform'), 'activation_cost_f32': lambda: activation_cost(ya, yb),
            'via_inputs_f32': lambda: cost_via_inputs(input_gram(ya[:20].T, yb[:20].T), wa, wb),
            'transport_map': lambda: transport_map(ya.double(), yb.double(), 'sinkhorn', reg=0.1, standardize_points=True).P}

@pytest.mark.parametrize('name', list(OT_REFERENCE))
def test_cpu_plans_are_unchanged_by_the_device_option(name):
    (d0, d1), (r0, r1) = _digest(_ot_cases()[name]()), OT_REFERENCE[name]
    assert abs(d0 - r0) <= 1e-12 * r1 and abs(d1 - r1) <= 1e-12 * r1, (name, (d0, d1), (r0, r1))

def test_plans_stay_on_the_cost_device():
    "On the CPU every plan stays on the CPU and no transfer is timed (only an exact solve off the CPU is); an identity map is made where asked"
    C = _ot_cases()['cost']()
    tm = {}
    for s in SOLVERS:
        assert ot_plan(C, s, reg=0.1, timings=tm).device == C.device
        assert plan_map(C, s, reg=0.1, timings=tm).P.device == C.device
    assert sorted(tm) == ['solves']
    assert identity_map(4, device='meta').P.device.type == 'meta' and identity_map(4).P.device.type == 'cpu'
