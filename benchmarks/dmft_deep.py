"""Benchmark of the deep (two-time) DMFT solver `solve_deep`: time per fixed-point iteration as the number of time
points grows, peak memory, the largest problem that fits in 24 GiB, and the issue's goal problem.

Run:  .venv/bin/python benchmarks/dmft_deep.py [--threads 2] [--S 1000] [--device auto]

What it prints (nothing is asserted):
1. seconds per iteration of a 2-hidden-layer, 2-task ReLU problem (4 samples per task) for a growing number of steps
   per task, split into the part that grows like n² (sampling, integrating, kernels) and the pathwise response
   functions, which grow like S·n³ (n = time points × pooled samples), and the fitted exponents;
2. the peak resident memory of each run above the process baseline, next to a memory model counted from the code
   (`deep_model_mb`: dense n×n matrices + n×S field arrays + row blocks + capped response batches), and from the model the largest grid n (and n·S)
   that fits in 24 GiB — an EXTRAPOLATION checked against the measured sizes, not a run;
3. the goal problem of the issue (2 tasks × 20 samples, 100 time points per task, 2 hidden layers, residual 1e-3, < 10 min
   on 2 cores): the exact (pathwise) responses are timed on 10 steps per task and extrapolated (they cost a day per
   iteration at n = 8040), then the whole problem is SOLVED with the coarse responses (`resp_every=10`,
   `resp_samples=128`: the first order exact, the remainder on blocks of 10 steps from 128 samples) in float64 after a
   float32 start (`float32_until=3e-2`: the iterations whose residual is above 3e-2 run in float32, about twice as
   fast; float32 alone stalls on a rounding floor near 7e-3) and timed, its peak memory printed next to the model.
   `--goal-only` runs only the solved goal problem (no exact timing).
The machine's load average is printed: on a shared machine the times are upper bounds. Everything runs on `--device`
('auto': a GPU when there is one; printed first) and is timed with the device synchronised (`timed`). On a GPU the
memory printed is the peak GPU memory allocated by the solve (the model counts the same arrays), and the goal is the
issue's: the goal problem in under 30 s (10 min on 2 CPU cores).
"""
import argparse, os, resource, time, warnings
import numpy as np
import torch
from cl_scale.dmft import similarity_problem, solve_deep, DMFTConvergenceWarning
import cl_scale.dmft as dmft
from cl_scale.device import DeviceError, resolve_device, describe_device, timed, synchronize

def rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def peak_mb(dev, base):
    "The peak memory since `mark(dev)` above `base`: the process's resident memory, or on a GPU the memory torch allocated"
    if dev.type == 'cuda': return (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    return rss_mb() - base

def mark(dev):
    "The baseline of `peak_mb` (and, on a GPU, its peak counter reset)"
    if dev.type != 'cuda': return rss_mb()
    synchronize(dev); torch.cuda.reset_peak_memory_stats(dev)
    return torch.cuda.memory_allocated(dev)

def timed_iterations(prob, steps, S, iters, dev):
    "seconds per iteration, and the share spent in the response functions (timed by wrapping dmft._responses, synchronised)"
    spent = [0.0]
    orig = dmft._responses
    def wrapped(*a, **k):
        out, t = timed(lambda: orig(*a, **k), dev); spent[0] += t; return out
    dmft._responses = wrapped
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DMFTConvergenceWarning)
            r, total = timed(lambda: solve_deep(prob, gamma0=1.0, depth=2, steps=steps, S=S, max_iter=iters, tol=1e-12, device=dev), dev)
    finally:
        dmft._responses = orig
    k = len(r.residuals)
    return total / k, spent[0] / k, r

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--S', type=int, default=1000)
    ap.add_argument('--goal-only', action='store_true', help='run only section 3 (the goal problem)')
    ap.add_argument('--device', default='auto', help="'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:N', 'mps'")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try: dev = resolve_device(a.device)
    except DeviceError as e: ap.error(str(e))
    print(f"device: {describe_device(dev)}")
    S = a.S
    if a.goal_only: return goal_section(S, exact=False, dev=dev)
    print(f"deep DMFT benchmark: torch {torch.__version__}, {a.threads} threads, S = {S}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
          f"({'SHARED machine: times are upper bounds' if os.getloadavg()[0] > 1.5 else 'machine idle'})")
    prob = similarity_problem(0.5, n_tasks=2, P=4, D=20, seed=1)
    solve_deep(prob, depth=2, steps=2, S=100, device=dev)                  # warm up
    rows, base = [], mark(dev)
    print("\n1-2. time per fixed-point iteration and peak memory, 2 hidden layers, 2 tasks × 4 samples")
    print(f"{'steps/task':>10} {'n':>6} {'s/iter':>9} {'responses':>10} {'rest':>8} {'peak MB':>9}")
    for k in (4, 8, 16, 32):
        n = prob.P_tot * (2 * k + 1)
        sec, resp, _ = timed_iterations(prob, k, S, 2 if k < 32 else 1, dev)
        mem = peak_mb(dev, base)
        rows.append((n, sec, resp, mem))
        print(f"{k:>10} {n:>6} {sec:>9.2f} {resp:>10.2f} {sec - resp:>8.2f} {mem:>9.0f}")
    n_, sec_, resp_, mem_ = (np.array(c, dtype=float) for c in zip(*rows))
    e_resp = np.polyfit(np.log(n_), np.log(resp_), 1)[0]
    e_rest = np.polyfit(np.log(n_), np.log(np.maximum(sec_ - resp_, 1e-9)), 1)[0]
    print(f"fitted exponents in n: responses {e_resp:.2f} (model 3), the rest {e_rest:.2f} (model 2)")
    def model_mb(n, S_): return deep_model_mb(n, S_)
    print("memory model (counted from the code) vs measured peak above baseline:")
    for n, m in zip(n_, mem_): print(f"  n = {int(n):>5}: model {model_mb(int(n), S):8.0f} MB, measured {m:8.0f} MB")
    budget = 24 * 1024
    for S_ in (1000, 4000, 10_000):
        lo, hi = 1, 10**6
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if model_mb(mid, S_) <= budget else (lo, mid - 1)
        print(f"  largest grid in 24 GiB (EXTRAPOLATED from the model) at S = {S_:>6}: n = {lo} (samples × time points), "
              f"n·S = {lo * S_:.2e}")
    n_goal = 40 * 201
    print(f"  the goal grid n = {n_goal} at S = {S}: {model_mb(n_goal, S) / 1024:.1f} GiB (fits; time, not memory, is the limit)")
    goal_section(S, e_resp, e_rest, dev=dev)

def deep_model_mb(n, S_, coarse_rows=None, L=2):
    """Memory model of one `solve_deep` iteration in float64, counted from the code (depth L = 2):
    - 2(L-1) dense n×n: the kernel pairs (Φ¹ with A¹, G² with B¹: each kernel stored once, in half a buffer);
    - exact responses (`coarse_rows` None) add 5: the drifts C̃, D̃ whole, the new A and B whole, and C̃, D̃ in float32
      (2 × ½); with S > n the sources are drawn by Cholesky: + 1 (the factor, LAPACK's working copy in place);
    - 11 n×S float64: 2 common random sources (u², r¹), the factors of Φ¹ and G² (φ/√S, g/√S: the samples themselves),
      the running layer's φ, φ', g, h, Λ2 and its source, and the readout layer's g and φ' kept for B¹ and G²;
    - row blocks (≈ 520 rows × n): about 6 at a time (the drift block, the moment block, the lift, the damped update);
    - coarse responses: the drifts' rows at the block starts (3 × coarse_rows × n), and the response batches,
      3 float32 (m × m × batch) states with m = coarse_rows (or n when exact), capped at 256 MiB together."""
    m = n if coarse_rows is None else coarse_rows
    dense = 2 * (L - 1) + (5 if coarse_rows is None else 0) + (1 if S_ > n else 0)
    batch_bytes = min(S_, max(1, 2**28 // (12 * m * m))) * 12 * m * m
    return (8 * (dense * n * n + 11 * n * S_ + 6 * 520 * n + 3 * (coarse_rows or 0) * n) + batch_bytes) / 2**20

def goal_section(S, e_resp=3.0, e_rest=2.0, every=10, resp_samples=128, exact=True, dev=torch.device('cpu')):
    n_goal = 40 * 201
    print("\n3. the goal problem: 2 tasks × 20 samples, 100 time points per task, 2 hidden layers, residual 1e-3")
    goal = similarity_problem(0.5, n_tasks=2, P=20, D=50, seed=1)
    if exact:
        sec, resp, r = timed_iterations(goal, 10, S, 1, dev)
        n_small = goal.P_tot * 21
        est = resp * (n_goal / n_small) ** max(e_resp, 3.0) + (sec - resp) * (n_goal / n_small) ** max(e_rest, 2.0)
        print(f"  exact responses: 10 steps per task (n = {n_small}): {sec:.1f} s per iteration ({resp:.1f} s in the responses); "
              f"extrapolated to n = {n_goal}: {est:.3g} s ≈ {est / 3600:.3g} h PER ITERATION")
    print(f"  coarse responses (resp_every={every}, resp_samples={resp_samples}), float64 after a float32 start "
          f"(float32_until=3e-2), S = {S}, the whole problem, solved:")
    base, cpu0 = mark(dev), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DMFTConvergenceWarning)
        res, wall = timed(lambda: solve_deep(goal, gamma0=1.0, depth=2, steps=100, S=S, tol=1e-3, max_iter=40, resp_every=every,
                                             resp_samples=resp_samples, dtype=torch.float64, float32_until=3e-2, smooth_step=True,
                                             jitter=1e-6, progress=True, device=dev), dev)
    peak, cpu = peak_mb(dev, base), time.process_time() - cpu0
    print(f"  → {wall:.0f} s ({wall / 60:.1f} min; CPU time {cpu:.0f} s) for {len(res.residuals)} iterations, converged={res.converged}, final residual "
          f"{res.residuals[-1]:.2e}; peak {'GPU memory' if dev.type == 'cuda' else 'memory above baseline'} {peak:.0f} MB (whole process {rss_mb():.0f} MB); load average now {os.getloadavg()[0]:.1f}")
    rows = len(dmft._response_grid([100, 100], every)["tc"]) * goal.P_tot       # coarse rows: block starts × samples
    print(f"  memory model (deep_model_mb: 2 dense n×n float64 + 11 n×S float64 + row blocks + coarse rows and batches): "
          f"{deep_model_mb(n_goal, S, rows):.0f} MB, measured {peak:.0f} MB")
    print(f"  residuals ({res.config['float32_iterations']} float32 iterations, then float64):",
          " ".join(f"{r:.1e}" for r in res.residuals))
    print("  the largest kernel change in each iteration came from:", " ".join(max(p, key=p.get) for p in res.config['residual_parts']))
    limit = 600 if dev.type == 'cpu' else 30
    print(f"  goal (< {'10 min' if limit == 600 else '30 s'} on {describe_device(dev)}): {'MET' if res.converged and wall < limit else 'NOT met'}")

if __name__ == '__main__': main()
