"""Benchmark: batched training of many small MLPs (stacked matrix products) vs training them one after another, and the sweep executor.

    python benchmarks/sweep_batched.py [--models 16] [--widths 64 256 1024] [--epochs 2] [--tasks 2]

Part 1 trains `--models` depth-3 μP MLPs (different γ0 and seeds, as in a sweep) on permuted digits, first one
after another with `train_continual(model, ...)`, then all at once with `train_continual([models], ...)`, at each
width, in this process. It prints the throughput ratio and each path's achieved GFLOP/s as a fraction of this
machine's dense float32 matmul GFLOP/s, measured at the start of the same run.

FLOPs counted: the training steps (forward 2·B·P, weight gradients 2·B·P, input gradients 2·B·(P − d_in·N) for a
model of P weights) and the evaluations that `train_continual` does after each task (a forward pass, 2·P per example,
over every task's test set and the task's own training set): both are matrix work done in the measured time. Data
shuffling, the loss and the updates are not counted, so the fractions are a lower bound. (Before 2026-12-07 only the
training steps were counted.)

Part 2 times the sweep executor: four sweeps, each run in this process alone (`executor='serial'`, PyTorch's
threads on all cores) and then with the default executor (`executor=None`: the package's warm process pool, this
process working while the pool starts), and prints the rule the default follows and each ratio. The first default
sweep starts the pool (cold), the others find it warm. `--skip-batched` runs only part 2, `--skip-executor` only part 1.

Numbers depend on what else runs on the machine: run it on a quiet machine.
"""
import argparse, math, os, tempfile, time
import numpy as np
import torch
from cl_scale.param import MLP, Parameterization
from cl_scale.data import make_stream, StreamConfig
from cl_scale.continual import train_continual, TrainConfig
from cl_scale.sweep import RunSpec, Sweep, ResultStore, run_sweep, run_group, close_pools, _POOLS, POOL_START, POOL_SLOWDOWN
from cl_scale.device import resolve_device, describe_device, synchronize

def matmul_peak(n=1024, reps=20, device='cpu'):
    "Best dense float32 GFLOP/s of an n×n matmul with PyTorch's threads (on a GPU: n = 4096, synchronised)"
    n = n if torch.device(device).type == 'cpu' else 4096
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3): a @ b
    best = 0.0
    for _ in range(reps):
        synchronize(device); t = time.perf_counter(); a @ b; synchronize(device); dt = time.perf_counter() - t
        best = max(best, 2 * n**3 / dt / 1e9)
    return best

def step_flops(d_in, width, depth, d_out, batch):
    P = d_in * width + (depth - 1) * width * width + width * d_out
    return 6 * batch * P - 2 * batch * d_in * width

def make_models(stream, width, M, device='cpu'):
    gammas = np.geomspace(0.03, 3.0, M)
    out = []
    for i, g in enumerate(gammas):
        torch.manual_seed(i)
        out.append(MLP(stream.d_in, width, 3, stream.d_out, Parameterization('mup', float(g))).to(device))
    return out

def part1(args, peak):
    stream = make_stream(StreamConfig('digits', 'permuted', n_tasks=args.tasks, p=0.5))
    cfgs = [TrainConfig(epochs=args.epochs, seed=i, n_probe=0, n_ntk=0) for i in range(args.models)]
    n_steps = sum(args.epochs * math.ceil(len(t.x_train) / cfgs[0].batch_size) for t in stream)
    n_samples = sum(args.epochs * len(t.x_train) for t in stream)
    n_eval = sum(sum(len(o.x_test) for o in stream) + len(t.x_train) for t in stream)   # examples evaluated, per model
    work = lambda w: args.models * (n_samples * step_flops(stream.d_in, w, 3, stream.d_out, 1)
                                    + n_eval * 2 * (stream.d_in * w + 2 * w * w + w * stream.d_out))
    print(f"\n[1] {args.models} MLPs (depth 3, μP, γ0 from 0.03 to 3) on {args.tasks} permuted-digit tasks × {args.epochs} epochs "
          f"({n_steps} SGD steps per model); batched = the stacked path of `Batched` (the MLP's batched matrix products); "
          f"best of 3 at widths <= 256, of 1 above")
    print(f"{'width':>6} {'loop s':>8} {'batched s':>9} {'speed-up':>8} {'loop GF/s':>10} {'batched GF/s':>12} "
          f"{'loop %peak':>10} {'batched %peak':>13}")
    rows = []
    for w in args.widths:
        flops = work(w)
        # warm-up (first-call costs of the allocator and the thread pool)
        train_continual(make_models(stream, w, 2, args.device), stream, cfgs[:2], progress=False)
        t_loop = t_bat = math.inf
        for _ in range(3 if w <= 256 else 1):      # the small widths take well under a second: best of 3 against noise
            ms = make_models(stream, w, args.models, args.device)
            t = time.perf_counter()
            for m, c in zip(ms, cfgs): train_continual(m, stream, c, progress=False)
            t_loop = min(t_loop, time.perf_counter() - t)
            ms = make_models(stream, w, args.models, args.device)
            t = time.perf_counter(); train_continual(ms, stream, cfgs, progress=False); t_bat = min(t_bat, time.perf_counter() - t)
        gl, gb = flops / t_loop / 1e9, flops / t_bat / 1e9
        rows.append((w, t_loop, t_bat))
        print(f"{w:>6} {t_loop:>8.2f} {t_bat:>9.2f} {t_loop / t_bat:>7.2f}× {gl:>10.1f} {gb:>12.1f} {gl / peak:>10.0%} {gb / peak:>13.0%}")
    got = {w: (tl / tb, work(w) / tb / 1e9 / peak)
           for w, tl, tb in rows}                        # width -> (speed-up over the loop, batched fraction of the peak)
    print(f"goal (issue 20): batched >= 50% of the matmul peak at width 256, >= 3x the loop at width 64 (peak {peak:.0f} GFLOP/s)")
    for w, k, goal, fmt in ((256, 1, 0.5, '{:.0%} of peak'), (64, 0, 3.0, '{:.2f}x the loop')):
        print(f"  width {w:>4}: " + (f"{fmt.format(got[w][k])} -> {'met' if got[w][k] >= goal else 'NOT met'}" if w in got
                                     else "not measured (add it to --widths)"))
    return rows

def _timed(sweep, store, **kw):
    t = time.perf_counter(); df = run_sweep(sweep, store, progress=False, device=ARGS.device, **kw); return time.perf_counter() - t, df

def part2(args):
    print("\n[2] the executor: the default (executor=None) against this process alone (executor='serial', all threads)")
    print("rule the default follows (sweep.pick_executor, run_jobs): one job, or workers=1 -> this process with all its "
          "threads. Otherwise, if the package's pool is warm (started by an earlier grid of this process), the pool: `workers` "
          "processes (default one per core), each job with cores // min(workers, jobs) threads. If it is cold, the grid starts "
          "in this process with all its threads, and after each job the pool is started only if the jobs left, at the pace "
          f"just measured, would end sooner on it (its start {POOL_START:.0f} s, then the work split over the workers, "
          f"{POOL_SLOWDOWN}x slower per job on a worker's threads, 20% margin); while it starts, this process keeps training "
          "jobs one at a time. The pool stays warm for the next grid; its processes exit with this one.")
    cases = [("16 runs, width 256, one run per job (the issue's case)", 256, 16, 1),
             ("16 runs, width 256, batch='auto' (2 batched jobs)", 256, 16, 'auto'),
             ("32 runs, width 64, one run per job", 64, 32, 1),
             ("128 runs, width 256, one run per job", 256, 128, 1),
             ("16 runs, width 256, one run per job (again)", 256, 16, 1),
             ("32 runs, width 64, one run per job (again)", 64, 32, 1)]
    run_group([RunSpec(width=64, depth=3, stream=dict(n_tasks=2), train=dict(epochs=1, n_probe=0, n_ntk=0))])  # imports, data
    print(f"{'case':<58} {'in-process s':>12} {'default s':>10} {'ratio':>7}  pool")
    with tempfile.TemporaryDirectory() as d:
        for k, (label, w, n, b) in enumerate(cases):
            base = RunSpec(width=w, depth=3, stream=dict(n_tasks=5), train=dict(epochs=2, n_probe=0, n_ntk=0))
            sweep = lambda name: Sweep(name, dict(seed=list(range(n))), base)
            t_ser, _ = _timed(sweep(f's{k}'), ResultStore(f"{d}/s{k}.db"), executor='serial', batch=b)
            state = 'warm' if any(p.warm() for p in _POOLS.values()) else 'cold'
            t_def, df = _timed(sweep(f'd{k}'), ResultStore(f"{d}/d{k}.db"), batch=b)
            used = 'started' if state == 'cold' and any(p.launched for p in _POOLS.values()) else ('used' if state == 'warm' else 'not started')
            print(f"{label:<58} {t_ser:>12.1f} {t_def:>10.1f} {t_ser / t_def:>6.2f}×  {state}, {used}")
    close_pools()
    print("goal: the default never slower than in-process (ratio >= 1, within noise), >= 1.5x where the work allows")

if __name__ == '__main__':
    ap = argparse.ArgumentParser()
    ap.add_argument('--models', type=int, default=16)
    ap.add_argument('--widths', type=int, nargs='+', default=[64, 256, 1024])
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--tasks', type=int, default=2)
    ap.add_argument('--skip-executor', action='store_true')
    ap.add_argument('--skip-batched', action='store_true')
    ap.add_argument('--device', default='auto', help="auto (CUDA when available), cpu, cuda, cuda:N, mps")
    args = ARGS = ap.parse_args()
    args.device = str(resolve_device(args.device))
    print(f"device: {describe_device(args.device)}; torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"load average before the run: {os.getloadavg()[0]:.2f}")
    peak = matmul_peak(device=args.device)
    print(f"dense float32 matmul (best of 20): {peak:.1f} GFLOP/s")
    if not args.skip_batched: part1(args, peak)
    if not args.skip_executor: part2(args)
    print(f"\nmatmul peak re-measured at the end: {matmul_peak(device=args.device):.1f} GFLOP/s; load average {os.getloadavg()[0]:.2f}")
