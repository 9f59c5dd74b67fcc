"""Benchmark: batched (vmap) training of many small MLPs vs training them one after another, and the sweep executor.

    python benchmarks/sweep_batched.py [--models 16] [--widths 64 256 1024] [--epochs 2] [--tasks 2]

Part 1 trains `--models` depth-3 μP MLPs (different γ0 and seeds, as in a sweep) on permuted digits, first one
after another with `train_continual(model, ...)`, then all at once with `train_continual([models], ...)`, at each
width, in this process. It prints the throughput ratio and each path's achieved GFLOP/s as a fraction of this
machine's dense float32 matmul GFLOP/s, measured at the start of the same run.

FLOPs counted: training steps only (forward 2·B·P, weight gradients 2·B·P, input gradients 2·B·(P − d_in·N)
for a model of P weights), so evaluation and the per-task test passes are extra work done in the measured time: the
fractions are a lower bound.

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
from cl_scale.sweep import RunSpec, Sweep, ResultStore, run_sweep, run_group, close_pools, _POOLS

def matmul_peak(n=1024, reps=20):
    "Best dense float32 GFLOP/s of an n×n matmul with PyTorch's threads"
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3): a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter(); a @ b; dt = time.perf_counter() - t
        best = max(best, 2 * n**3 / dt / 1e9)
    return best

def step_flops(d_in, width, depth, d_out, batch):
    P = d_in * width + (depth - 1) * width * width + width * d_out
    return 6 * batch * P - 2 * batch * d_in * width

def make_models(stream, width, M):
    gammas = np.geomspace(0.03, 3.0, M)
    out = []
    for i, g in enumerate(gammas):
        torch.manual_seed(i)
        out.append(MLP(stream.d_in, width, 3, stream.d_out, Parameterization('mup', float(g))))
    return out

def part1(args, peak):
    stream = make_stream(StreamConfig('digits', 'permuted', n_tasks=args.tasks, p=0.5))
    cfgs = [TrainConfig(epochs=args.epochs, seed=i, n_probe=0, n_ntk=0) for i in range(args.models)]
    n_steps = sum(args.epochs * math.ceil(len(t.x_train) / cfgs[0].batch_size) for t in stream)
    n_samples = sum(args.epochs * len(t.x_train) for t in stream)
    print(f"\n[1] {args.models} MLPs (depth 3, μP, γ0 from 0.03 to 3) on {args.tasks} permuted-digit tasks × {args.epochs} epochs "
          f"({n_steps} SGD steps per model)")
    print(f"{'width':>6} {'loop s':>8} {'batched s':>9} {'speed-up':>8} {'loop GF/s':>10} {'batched GF/s':>12} "
          f"{'loop %peak':>10} {'batched %peak':>13}")
    rows = []
    for w in args.widths:
        flops = args.models * n_samples * step_flops(stream.d_in, w, 3, stream.d_out, 1)
        # warm-up (first-call costs of vmap and the allocator)
        train_continual(make_models(stream, w, 2), stream, cfgs[:2], progress=False)
        ms = make_models(stream, w, args.models)
        t = time.perf_counter()
        for m, c in zip(ms, cfgs): train_continual(m, stream, c, progress=False)
        t_loop = time.perf_counter() - t
        ms = make_models(stream, w, args.models)
        t = time.perf_counter(); train_continual(ms, stream, cfgs, progress=False); t_bat = time.perf_counter() - t
        gl, gb = flops / t_loop / 1e9, flops / t_bat / 1e9
        rows.append((w, t_loop, t_bat))
        print(f"{w:>6} {t_loop:>8.2f} {t_bat:>9.2f} {t_loop / t_bat:>7.2f}× {gl:>10.1f} {gb:>12.1f} {gl / peak:>10.0%} {gb / peak:>13.0%}")
    return rows

def _timed(sweep, store, **kw):
    t = time.perf_counter(); df = run_sweep(sweep, store, progress=False, **kw); return time.perf_counter() - t, df

def part2(args):
    print("\n[2] the executor: the default (executor=None) against this process alone (executor='serial', all threads)")
    print("rule the default follows: one job, or workers=1 -> this process with all its threads; otherwise the package's "
          "warm pool of `workers` processes (default one per core), each job with cores // min(workers, jobs) threads; "
          "while the pool starts (the first grid in a process: its forkserver imports PyTorch), this process trains jobs "
          "itself, one at a time with a worker's thread count, so a cold start costs at most what it returns; the pool "
          "stays warm for the next grid and its processes exit with this one")
    cases = [("16 runs, width 256, one run per job (the issue's case)", 256, 16, 1),
             ("16 runs, width 256, batch='auto' (2 batched jobs)", 256, 16, 'auto'),
             ("32 runs, width 64, one run per job", 64, 32, 1),
             ("64 runs, width 256, one run per job", 256, 64, 1)]
    run_group([RunSpec(width=64, depth=3, stream=dict(n_tasks=2), train=dict(epochs=1, n_probe=0, n_ntk=0))])  # imports, data
    print(f"{'case':<58} {'in-process s':>12} {'default s':>10} {'ratio':>7}  pool")
    with tempfile.TemporaryDirectory() as d:
        for k, (label, w, n, b) in enumerate(cases):
            base = RunSpec(width=w, depth=3, stream=dict(n_tasks=5), train=dict(epochs=2, n_probe=0, n_ntk=0))
            sweep = lambda name: Sweep(name, dict(seed=list(range(n))), base)
            t_ser, _ = _timed(sweep(f's{k}'), ResultStore(f"{d}/s{k}.db"), executor='serial', batch=b)
            state = 'cold' if not _POOLS else 'warm'
            t_def, df = _timed(sweep(f'd{k}'), ResultStore(f"{d}/d{k}.db"), batch=b)
            print(f"{label:<58} {t_ser:>12.1f} {t_def:>10.1f} {t_ser / t_def:>6.2f}×  {state}")
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
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"load average before the run: {os.getloadavg()[0]:.2f}")
    peak = matmul_peak()
    print(f"dense float32 matmul (1024×1024, best of 20): {peak:.1f} GFLOP/s")
    if not args.skip_batched: part1(args, peak)
    if not args.skip_executor: part2(args)
    print(f"\nmatmul peak re-measured at the end: {matmul_peak():.1f} GFLOP/s; load average {os.getloadavg()[0]:.2f}")
