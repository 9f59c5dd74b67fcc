"""Checks of `cl_scale.dmft` beyond the notebook: closed forms and kernels on random inputs (hypothesis), the
solver = finite network identity for more settings, reproducibility, streams as input, and (slow) a second
convergence study."""
import math
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from cl_scale.dmft import *

def _psd(n, seed, rank=None):
    A = np.random.default_rng(seed).standard_normal((n, rank or n))
    return A @ A.T / (rank or n)

@settings(max_examples=25, deadline=None)
@given(n1=st.integers(1, 6), n2=st.integers(1, 6), k1=st.integers(0, 20), k2=st.integers(0, 20), seed=st.integers(0, 10**6),
       rank=st.integers(1, 12), eta=st.floats(0.05, 1.5))
def test_lazy_closed_form_is_the_iteration(n1, n2, k1, k2, seed, rank, eta):
    P = n1 + n2
    K = _psd(P, seed, rank)                                       # often singular: no inverse may be taken
    y = np.random.default_rng(seed + 1).standard_normal(P)
    prob = DMFTProblem(np.eye(P), y, (n1, n2))
    got = lazy_two_layer(prob, [k1, k2], eta0=eta, K=K)
    D, want = y.copy(), [[0.5 * np.mean(y[:n1] ** 2), 0.5 * np.mean(y[n1:] ** 2)]]
    for c, (sl, k) in enumerate(((slice(0, n1), k1), (slice(n1, P), k2))):
        for _ in range(k):
            D = D - eta / (sl.stop - sl.start) * K[:, sl] @ D[sl]
            want.append([0.5 * np.mean(D[:n1] ** 2), 0.5 * np.mean(D[n1:] ** 2)])
    # rounding only: up to 40 iterated steps against the closed form; hypothesis found a case at 2.8e-9 relative
    # (an entry of 7e-4 after cancellation), so 1e-9 was tighter than float64 can promise here
    np.testing.assert_allclose(got, np.array(want), rtol=1e-7, atol=1e-12)

@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 8), seed=st.integers(0, 10**6), rank=st.integers(1, 8))
def test_arccos_kernels_are_psd_kernels(n, seed, rank):
    K = _psd(n, seed, rank)
    for act in ('relu', 'linear'):
        Phi, Gd = arccos_kernels(K, act)
        assert np.linalg.eigvalsh(Phi).min() > -1e-10 and np.linalg.eigvalsh(Gd).min() > -1e-10
        assert np.linalg.eigvalsh(lazy_kernel(K, act, 'centered')).min() > -1e-10
    Phi, Gd = arccos_kernels(2.5 * K)                             # degree-1 kernel is 1-homogeneous, degree-0 is 0-homogeneous
    np.testing.assert_allclose(Phi, 2.5 * arccos_kernels(K)[0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(Gd, arccos_kernels(K)[1], atol=1e-7)   # arccos near ±1 amplifies rounding to ~√ε

@settings(max_examples=20, deadline=None)
@given(eps=st.floats(0, 1), T=st.integers(1, 4), seed=st.integers(0, 1000))
def test_similarity_model_gram(eps, T, seed):
    p = similarity_problem(eps, n_tasks=T, P=5, D=7, seed=seed)
    K1 = p.Kx[:5, :5]
    C = np.full((T, T), eps); np.fill_diagonal(C, 1.0)
    np.testing.assert_allclose(p.Kx, np.kron(C, K1), atol=1e-12)

@pytest.mark.parametrize('act,readout', [('linear', 'zero'), ('relu', 'centered'), ('linear', 'centered')])
def test_solver_is_the_finite_network_three_tasks(act, readout):
    prob = similarity_problem(0.6, n_tasks=3, P=7, D=9, seed=2)
    fin, net, (W0, w0) = finite_two_layer(prob, 32, gamma0=0.7, steps=[15, 10, 5], eta0=0.4, act=act, readout=readout,
                                          base_width=16, return_model=True)
    h0 = (torch.as_tensor(prob.X) @ W0.T / math.sqrt(prob.X.shape[1])).T
    sol = solve_two_layer(prob, gamma0=0.7, steps=[15, 10, 5], eta0=0.4, S=32, act=act, readout=readout, base_width=16,
                          init_fields=(h0, w0[0, 0]), dtype=torch.float64)
    np.testing.assert_allclose(sol.loss, fin, rtol=1e-9, atol=1e-13)
    assert sol.task_end_steps == [15, 25, 30]

def test_reproducible_and_bounded_memory():
    prob = similarity_problem(0.5, P=10, D=10)
    a, b, c = (solve_two_layer(prob, steps=20, S=500, seed=s, snapshot_steps=(0, 40) if s == 0 else ()) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.loss, b.loss)
    assert not np.array_equal(a.loss, c.loss)
    assert sorted(a.snapshots) == [0, 40] and a.snapshots[0]['h'].shape == (500, 20) and not c.snapshots
    np.testing.assert_allclose(a.snapshots[0]['z'], 0)             # zero readout at step 0

def test_problem_from_stream():
    from cl_scale.data import make_stream
    stream = make_stream(kind='permuted', p=0.5, n_tasks=2)
    prob = problem_from_stream(stream, n_per_task=30)
    assert prob.task_sizes == (30, 30) and prob.X.shape == (60, 64)
    np.testing.assert_array_equal(prob.y[:30], prob.y[30:])        # the same images in every task
    assert sorted(set(prob.y)) == [-1.0, 1.0] and (prob.y == 1).sum() == 30
    r = solve_two_layer(prob, gamma0=0.5, steps=50, S=2000)
    assert r.loss[50, 0] < r.loss[0, 0]
    with pytest.raises(ValueError, match='two classes'): problem_from_stream(stream, classes=(0, 1, 2))

@pytest.mark.slow
def test_convergence_wider_networks_more_seeds():
    "Away from the smallest width, with 24 seeds, the fluctuation of a finite network shrinks like N^-1/2 (~2 min)"
    study = convergence_study(similarity_problem(0.25, n_tasks=2, P=30, D=20, seed=1), widths=(256, 1024, 4096, 16384),
                              gamma0=0.5, steps=100, seeds=range(24))
    assert abs(study['slopes']['fluct'] + 0.5) < 0.1, study['slopes']
    assert np.all(np.diff(study['gap']) < 0) and np.all(np.diff(study['fluct']) < 0)

# ---- the deep (two-time) solver -------------------------------------------------------------------------------

@pytest.fixture
def one_thread():
    "The deep solver's small test problems are dominated by thread synchronisation on a shared 2-core machine"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.mark.parametrize('act,readout', [('relu', 'zero'), ('linear', 'zero'), ('relu', 'centered')])
def test_deep_depth_one_is_the_particle_solver(act, readout, one_thread):
    "With one hidden layer and the same seed, the fixed-point solver stops after one sweep and is the particle solver"
    prob = similarity_problem(0.4, n_tasks=3, P=5, D=8, seed=4)
    d = solve_deep(prob, gamma0=0.8, depth=1, steps=[6, 4, 5], eta0=0.7, S=300, act=act, readout=readout, seed=3)
    p = solve_two_layer(prob, gamma0=0.8, steps=[6, 4, 5], eta0=0.7, S=300, act=act, readout=readout, seed=3, dtype=torch.float64)
    np.testing.assert_allclose(d.loss, p.loss, rtol=1e-9, atol=1e-12)
    assert d.converged and d.residuals.tolist() == [0.0] and d.task_end_steps == [6, 10, 15]
    for kd, kp in zip(d.kernels, p.kernels):
        np.testing.assert_allclose(kd['K'], kp['K'], rtol=1e-9, atol=1e-12)

@pytest.mark.parametrize('depth,readout', [(3, 'zero'), (2, 'centered')])
def test_deep_lazy_limit(depth, readout, one_thread):
    "γ0 → 0: the two-time solver follows the closed form with the deep frozen kernel (Φ^L, or the deep NTK when centred)"
    prob = similarity_problem(0.5, n_tasks=2, P=3, D=10, seed=2)
    S = 800
    r = solve_deep(prob, gamma0=0.01, depth=depth, steps=5, S=S, readout=readout)
    lz = lazy_deep(prob, depth, steps=5, readout=readout)
    assert r.converged
    assert np.abs(r.loss - lz).max() < 2 / math.sqrt(S), np.abs(r.loss - lz).max()    # Monte-Carlo error of S samples
    other = lazy_deep(prob, depth, steps=5, readout='centered' if readout == 'zero' else 'zero')
    assert np.abs(r.loss - other).max() > 4 / math.sqrt(S)                            # the other readout's kernel is wrong

def test_deep_warns_with_diagnostics_and_refuses_bad_input(one_thread):
    prob = similarity_problem(0.5, n_tasks=2, P=3, D=10, seed=2)
    with pytest.warns(DMFTConvergenceWarning, match=r'2 iterations \(max_iter=2\).*residual history.*per kernel'):
        r = solve_deep(prob, gamma0=1.5, depth=2, steps=4, S=200, max_iter=2, tol=1e-12)
    assert not r.converged and len(r.residuals) == 2 and np.isfinite(r.loss).all()
    for bad in (dict(depth=1.5), dict(S=0), dict(damping=-0.1), dict(tol=-1), dict(max_iter=0), dict(jitter=-1),
                dict(readout='random'), dict(eta0=0)):
        with pytest.raises(ValueError): solve_deep(prob, **({'steps': 3} | bad))

def test_finite_deep_ntp_is_mup_at_effective_gamma0(one_thread):
    "NTP at width N trains exactly like μP with γ0 = sqrt(N0/N) (same seed, float64), at depth 2"
    prob = similarity_problem(0.5, n_tasks=2, P=4, D=6, seed=1)
    a = finite_deep(prob, 128, 2, steps=4, eta0=0.5, parameterization='ntp')
    b = finite_deep(prob, 128, 2, gamma0=math.sqrt(64 / 128), steps=4, eta0=0.5)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(finite_deep(prob, 32, 1, gamma0=0.7, steps=4), finite_two_layer(prob, 32, gamma0=0.7, steps=4))

@pytest.mark.slow
def test_deep_finite_widths_converge_to_dmft():
    """μP networks with two hidden layers approach the two-time DMFT as the width grows to 2048 (~4 min). The reference
    is the mean of 4 solves (S = 6000, seeds 0-3): one solve's Monte-Carlo error (RMS ≈ 0.005 over seeds) is as large as
    the finite-width bias being tested, so the bias check allows twice the reference's standard error."""
    prob = similarity_problem(0.5, n_tasks=2, P=4, D=20, seed=1)
    refs = [solve_deep(prob, gamma0=1.0, depth=2, steps=8, S=6000, tol=1e-4, seed=s) for s in range(4)]
    assert all(r.converged for r in refs)
    R = np.stack([r.loss for r in refs])
    ref = type('Ref', (), dict(loss=R.mean(0)))
    ref_err = float(np.sqrt(np.mean((R.std(0, ddof=1) / 2) ** 2)))          # RMS standard error of the 4-seed mean
    rms = lambda a: float(np.sqrt(np.mean(a ** 2)))
    gap, bias = [], []
    for N in (32, 128, 512, 2048):
        Ls = np.stack([finite_deep(prob, N, 2, gamma0=1.0, steps=8, seed=s, dtype=torch.float32) for s in range(12)])
        gap.append(np.mean([rms(L - ref.loss) for L in Ls])); bias.append(rms(Ls.mean(0) - ref.loss))
    assert np.all(np.diff(gap) < 0), gap
    slope = np.polyfit(np.log([32, 128, 512, 2048]), np.log(gap), 1)[0]
    assert -0.8 < slope < -0.25, (slope, gap)
    assert bias[-1] < bias[0] / 3 + 2 * ref_err, (bias, ref_err)

def test_coarse_responses_linear_network_is_exact_at_stride_one(one_thread):
    "a linear net has deterministic responses: the split first order + coarse remainder at k=1 reproduces the exact solver"
    prob = similarity_problem(0.3, n_tasks=2, P=3, D=10, seed=2)
    kw = dict(gamma0=1.5, depth=2, steps=4, S=200, act='linear', tol=1e-6, max_iter=25)
    ex, split = solve_deep(prob, **kw), solve_deep(prob, resp_samples=200, **kw)
    assert ex.converged and split.converged
    np.testing.assert_allclose(split.loss, ex.loss, atol=1e-5)       # float32 per-sample solves inside both

@pytest.mark.slow
def test_coarse_responses_approach_exact_as_blocks_shrink(one_thread):
    """ReLU, 16 steps per task: the finest blocks (2 steps) are the most accurate, within 1e-3 of the exact responses.
    (4-step against 16-step blocks is not ordered robustly: both errors are 7-9e-4 and their order changed with the
    Monte-Carlo realisation, 4 < 16 with Cholesky-drawn sources, 16 < 4 with the factor-drawn ones.)"""
    prob = similarity_problem(0.5, n_tasks=2, P=4, D=20, seed=1)
    kw = dict(gamma0=1.0, depth=2, steps=16, S=1000, tol=1e-5, max_iter=40)
    ex = solve_deep(prob, **kw)
    err = {k: np.abs(solve_deep(prob, resp_every=k, **kw).loss - ex.loss).max() for k in (2, 4, 16)}
    assert err[2] < min(err[4], err[16]), err
    assert err[2] < 1e-3, err
