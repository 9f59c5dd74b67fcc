"""The device benchmark (issue 22, item 5): the heavy paths on an accelerator against the CPU, in the same run.

Run:  .venv/bin/python benchmarks/device.py [--device auto] [--parts cell,estimate,dmft,fusion,precision] [--no-cpu]

Every section times the same work on the CPU and on `--device` (default 'auto': CUDA when torch sees a GPU), in this
one process, synchronised (`cl_scale.device.timed`), and prints the ratio. Without an accelerator only the CPU column
is filled, which is what a machine without a GPU can say.

1. `cell`: a width-2048 sweep cell of the continual full mode — one μP MLP (3 hidden layers, γ0 = 1) on the full mode's
   five permuted-digit tasks (its epochs, probe and evaluation), through the run layer (`run_group`).
2. `estimate`: the per-run time at every width of the full mode's grid (one run per dataset and width, the first of
   each seeded the same way), and from it the full mode's continual-learning group: the distinct runs of
   `CLSuite.make(quick=False)` at each (dataset, width) times that width's per-run time, the learning-rate selection's
   runs scaled by their share of tasks (2 of 5). Runs are timed one at a time, so batched groups (faster, on a GPU
   much faster) make the real total smaller: an upper bound.
3. `dmft`: the deep DMFT goal problem (n = 8040; the options of `benchmarks/dmft_deep.py --goal-only`).
4. `fusion`: the benchmark ViT fusion (two 6-block ViTs of width 192, 200 images, exact OT; `benchmarks/fusion.py`).
5. `precision`: what reduced precision changes in a table — a small γ0 sweep (width 256, γ0 ∈ {0.03, 0.1, 0.3, 1, 3},
   3 seeds, 5 permuted-digit tasks) under fp32, tf32 and bf16 on `--device`: the mean AA and CFr per γ0 and the largest
   change against fp32, beside the seed-to-seed standard error (a change below it is noise).

Goals (one H100-class GPU): the continual full mode under 1 hour, the deep DMFT goal problem under 30 s, the benchmark
ViT fusion under 1 s; on the CPU nothing slower than before (the other benchmarks check that)."""
import argparse, importlib.util, math, os, sys, tempfile, time, warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
import numpy as np
import torch
from cl_scale.device import resolve_device, describe_device, timed
from cl_scale.sweep import RunSpec, Sweep, ResultStore, run_group, run_sweep
from cl_scale.cl_experiments import CLSuite

HERE = Path(__file__).parent

def _bench(name):
    "A sibling benchmark script as a module (its definitions, not its main)"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE/f"{name}.py")
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod

def _run(spec, device):
    "One run through the run layer on `device`; its seconds (synchronised) and its record"
    recs, secs = timed(lambda: run_group([spec.to_dict()], device=device), device)
    if recs[0]['status'] != 'done': raise RuntimeError(recs[0]['error'])
    return secs, recs[0]['result']

def _devices(args):
    return (['cpu'] if not args.no_cpu else []) + ([args.device] if args.device != 'cpu' else [])

def _row(label, times):
    cols = ' '.join(f"{t:>10.2f}" if t is not None else f"{'—':>10}" for t in times.values())
    ratio = ''
    if len(times) == 2 and all(v for v in times.values()):
        a, b = times.values(); ratio = f" {a / b:>8.1f}×"
    print(f"  {label:<44} {cols}{ratio}")

def _head(devs):
    print(f"  {'':<44} " + ' '.join(f"{d + ' s':>10}" for d in devs) + (f" {'speed-up':>9}" if len(devs) == 2 else ''))

def full_spec(width, dataset='digits', suite=None):
    suite = suite or CLSuite.make(quick=False)
    return replace(suite.base('permuted', dataset), width=width, gamma0=1.0)

def part_cell(args):
    devs = _devices(args)
    print("\n[1] a width-2048 sweep cell of the continual full mode (one μP MLP, 5 permuted-digit tasks, through run_group)")
    _head(devs)
    spec = full_spec(2048)
    times = {d: _run(spec, d)[0] for d in devs}
    _row(f"width 2048, {spec.train['epochs']} epochs per task", times)
    return times

def part_estimate(args):
    devs = _devices(args)
    suite = CLSuite.make(quick=False)
    runs = {r.run_id: r for sw in suite.sweeps().values() for r in sw.runs()}
    lr = {r.run_id: r for r in suite.lr_runs().runs()}
    count = Counter((r.stream['dataset'], r.width) for r in runs.values())
    count_lr = Counter((r.stream['dataset'], r.width) for r in lr.values())
    share = suite.lr_tasks / suite.n_tasks
    print(f"\n[2] per-run time at every width of the full mode ({len(runs)} distinct runs + {len(lr)} selection runs, "
          f"each selection run ≈ {share:.0%} of a run); one run timed per (dataset, width)")
    _head(devs)
    per, total = {}, {d: 0.0 for d in devs}
    for key in sorted(count | count_lr):
        ds, w = key
        t = {d: _run(full_spec(w, ds, suite), d)[0] for d in devs}
        per[key] = t
        n_eff = count[key] + share * count_lr[key]
        for d in devs: total[d] += n_eff * t[d]
        _row(f"{ds}, width {w} ({count[key]} runs + {count_lr[key]} selection)", t)
    print("  estimated full-mode continual-learning group, runs one at a time (an upper bound: batched groups are faster):")
    for d in devs: print(f"    {d}: {total[d]:.0f} s ≈ {total[d] / 3600:.2f} h")
    if args.device != 'cpu': print(f"  goal: under 1 hour on one GPU -> {'MET' if total[args.device] < 3600 else 'NOT met'} (estimate)")
    return per, total

def part_dmft(args):
    from cl_scale.dmft import similarity_problem, solve_deep, DMFTConvergenceWarning
    devs = _devices(args)
    print("\n[3] the deep DMFT goal problem (2 tasks × 20 samples, 100 steps per task, depth 2, n = 8040; "
          "coarse responses every 10 steps, 128 samples, float32 start then float64, S = 1000)")
    _head(devs)
    goal = similarity_problem(0.5, n_tasks=2, P=20, D=50, seed=1)
    times, res = {}, {}
    for d in devs:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', DMFTConvergenceWarning)
            res[d], times[d] = timed(lambda: solve_deep(goal, gamma0=1.0, depth=2, steps=100, S=1000, tol=1e-3, max_iter=40,
                                                        resp_every=10, resp_samples=128, dtype=torch.float64, float32_until=3e-2,
                                                        smooth_step=True, jitter=1e-6, device=d), d)
    _row("solve_deep, to a residual of 1e-3", times)
    for d in devs: print(f"    {d}: {len(res[d].residuals)} iterations, converged={res[d].converged}, final residual {res[d].residuals[-1]:.2e}")
    if len(devs) == 2:
        a, b = (res[d].loss for d in devs)
        print(f"    largest difference of the loss curves, {devs[1]} vs cpu: {np.abs(a - b).max():.2e} (of max {np.abs(a).max():.3g})")
    if args.device != 'cpu': print(f"  goal: under 30 s on one GPU -> {'MET' if times[args.device] < 30 else 'NOT met'}")
    return times

def part_fusion(args):
    import cl_scale.fusion as F
    from cl_scale.models import ViT
    devs = _devices(args)
    cfg, shape, desc = _bench('fusion').VITS['bench192']
    print(f"\n[4] the benchmark ViT fusion ({desc}, 200 images, exact OT), best of 3 after a warm-up")
    _head(devs)
    torch.manual_seed(0); x = torch.randn(200, *shape); m1, m2 = ViT(**cfg), ViT(**cfg)
    times = {}
    for d in devs:
        F.fuse([m1, m2], calib_data=x[:8], device=d)              # warm-up: kernels, allocator, first-call costs
        times[d] = min(timed(lambda: F.fuse([m1, m2], calib_data=x, device=d), d)[1] for _ in range(3))
    _row("fuse (activation cost, exact OT)", times)
    if args.device != 'cpu': print(f"  goal: under 1 s on one GPU -> {'MET' if times[args.device] < 1 else 'NOT met'}")
    return times

def part_precision(args):
    print(f"\n[5] what reduced precision changes in a table, on {args.device}: width 256, 5 permuted-digit tasks, 3 seeds")
    base = RunSpec(width=256, stream=dict(dataset='digits', kind='permuted', n_tasks=5, p=0.5),
                   train=dict(epochs=2, lr=30.0, n_probe=0, n_ntk=0))
    tables, diverged = {}, {}
    with tempfile.TemporaryDirectory() as d:
        for prec in ('fp32', 'tf32', 'bf16'):
            b = replace(base, train={**base.train, **({} if prec == 'fp32' else {'precision': prec})})
            df = run_sweep(Sweep(prec, dict(gamma0=[0.03, 0.1, 0.3, 1.0, 3.0], seed=[0, 1, 2]), b), ResultStore(Path(d)/'p.db'),
                           executor='serial', progress=False, device=args.device)
            tables[prec] = df[~df.diverged.astype(bool)].groupby('gamma0')[['AA', 'CFr']].agg(['mean', 'sem'])
            diverged[prec] = int(df.diverged.astype(bool).sum())
    t0 = tables['fp32']
    print(f"  {'γ0':>5} " + ' '.join(f"{p + ' AA':>9} {p + ' CFr':>9}" for p in tables) + f" {'AA sem':>8} {'CFr sem':>8}")
    for g in t0.index:
        print(f"  {g:>5g} " + ' '.join(f"{t.loc[g, ('AA', 'mean')]:>9.4f} {t.loc[g, ('CFr', 'mean')]:>9.4f}" for t in tables.values())
              + f" {t0.loc[g, ('AA', 'sem')]:>8.4f} {t0.loc[g, ('CFr', 'sem')]:>8.4f}")
    for p in ('tf32', 'bf16'):
        dAA = (tables[p][('AA', 'mean')] - t0[('AA', 'mean')]).abs(); dCF = (tables[p][('CFr', 'mean')] - t0[('CFr', 'mean')]).abs()
        z = max((dAA / t0[('AA', 'sem')]).max(), (dCF / t0[('CFr', 'sem')]).max())      # each γ0 against its own standard error
        print(f"  {p}: largest change against fp32: AA {dAA.max():.4f}, CFr {dCF.max():.4f}; largest change in units of that "
              f"γ0's seed-to-seed standard error: {z:.2f} ({'within' if z <= 1 else 'ABOVE'} the noise of one cell)")
    print(f"  runs left out as diverged (fp32, tf32, bf16): {', '.join(str(n) for n in diverged.values())} of {len(df)} each")
    return tables

PARTS = dict(cell=part_cell, estimate=part_estimate, dmft=part_dmft, fusion=part_fusion, precision=part_precision)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='auto', help="auto (CUDA when available), cpu, cuda, cuda:N, mps")
    ap.add_argument('--parts', default='cell,fusion,dmft', help=f"comma-separated, of {','.join(PARTS)}")
    ap.add_argument('--no-cpu', action='store_true', help="time the device only (the CPU column is the long one)")
    ap.add_argument('--threads', type=int, default=0, help="torch threads on the CPU (0: torch's choice)")
    args = ap.parse_args()
    if args.threads: torch.set_num_threads(args.threads)
    args.device = str(resolve_device(args.device))
    bad = [p for p in args.parts.split(',') if p not in PARTS]
    if bad: ap.error(f"unknown parts {bad}: choose from {list(PARTS)}")
    print(f"device: {describe_device(args.device)}; CPU: {describe_device('cpu')}, {os.cpu_count()} cores; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.2f}")
    if args.device == 'cpu': print("no accelerator here: only the CPU column is measured")
    for p in args.parts.split(','): PARTS[p](args)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
