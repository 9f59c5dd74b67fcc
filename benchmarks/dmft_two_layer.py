"""Benchmark of the two-layer DMFT particle solver (issue: 2 tasks × 30 samples, S = 10⁴ particles, 400 steps).

Run:  .venv/bin/python benchmarks/dmft_two_layer.py [--threads 2] [--device auto]

Prints the solver's time (best of 3), its memory above the process baseline, the arithmetic rate as a fraction of
this machine's dense matmul rate measured in the same process, and the ratio to a plain finite-width network of
the same accuracy: the particle system with S particles *is* a width-S network (its Monte-Carlo error is that of
width S), so the baseline is `finite_two_layer` at width S, trained by autograd on the same problem. Everything runs on
`--device` ('auto': a GPU when there is one; printed first), timed with the device synchronised (`timed`); on a GPU the
memory line is the peak GPU memory the solver allocated."""
import argparse, resource, time
import numpy as np
import torch
from cl_scale.dmft import similarity_problem, solve_two_layer, finite_two_layer
from cl_scale.device import DeviceError, resolve_device, describe_device, timed, synchronize

def rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def matmul_gflops(dtype, dev, n=1024, reps=20):
    a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
    a @ b
    def run():
        for _ in range(reps): a @ b
    return 2 * n**3 * reps / timed(run, dev)[1] / 1e9

def best(f, dev, reps=3):
    "min seconds over `reps` runs of f (the device synchronised around each), and f's last result"
    ts = []
    for _ in range(reps):
        out, t = timed(f, dev); ts.append(t)
    return min(ts), out

def main():
    ap = argparse.ArgumentParser(); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--device', default='auto', help="'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:N', 'mps'")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    try: dev = resolve_device(a.device)
    except DeviceError as e: ap.error(str(e))
    print(f"device: {describe_device(dev)}")
    P, S, steps = 30, 10_000, 200
    prob = similarity_problem(0.5, n_tasks=2, P=P, D=100)
    solve_two_layer(prob, steps=2, S=100, device=dev)                         # warm up
    base = rss_mb()
    if dev.type == 'cuda': synchronize(dev); torch.cuda.reset_peak_memory_stats(dev); gbase = torch.cuda.memory_allocated(dev)
    t32, r32 = best(lambda: solve_two_layer(prob, gamma0=1.0, steps=steps, S=S, dtype=torch.float32, device=dev), dev)
    mem = rss_mb() - base if dev.type != 'cuda' else (torch.cuda.max_memory_allocated(dev) - gbase) / 2**20
    t64, r64 = best(lambda: solve_two_layer(prob, gamma0=1.0, steps=steps, S=S, dtype=torch.float64, device=dev), dev)
    Pt, n = prob.P_tot, 2 * steps
    flops = n * (2 * S * P * Pt + 2 * S * Pt + 2 * S * P)                     # GEMM h-update + f + readout update
    peak32, peak64 = matmul_gflops(torch.float32, dev), matmul_gflops(torch.float64, dev)
    tf, fin = best(lambda: finite_two_layer(prob, S, gamma0=1.0, steps=steps, dtype=torch.float32, device=dev), dev, reps=1)
    print(f"problem: 2 tasks × {P} samples, S = {S} particles, {n} steps, {a.threads} threads, torch {torch.__version__}")
    print(f"solver float32: {t32:.3f} s  ({flops / t32 / 1e9:.1f} GFLOP/s = {flops / t32 / 1e9 / peak32:.0%} of the "
          f"{peak32:.0f} GFLOP/s float32 matmul peak); peak {'GPU memory' if dev.type == 'cuda' else 'memory above baseline'} {mem:.0f} MB")
    print(f"solver float64: {t64:.3f} s  ({flops / t64 / 1e9:.1f} GFLOP/s = {flops / t64 / 1e9 / peak64:.0%} of the "
          f"{peak64:.0f} GFLOP/s float64 matmul peak)")
    print(f"finite network of width {S} (autograd, float32): {tf:.3f} s → solver is {tf / t32:.1f}× faster")
    print(f"float32 vs float64 final losses: {np.abs(r32.loss[-1] - r64.loss[-1]).max():.1e} apart "
          f"(Monte-Carlo noise at S = {S} is ~1e-3); finite net vs solver: {np.abs(fin[-1] - r32.loss[-1]).max():.1e}")

if __name__ == '__main__': main()
