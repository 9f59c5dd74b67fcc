"""Benchmark of OT fusion (issue: transformer fusion II, §3): two 6-block ViTs of width 192 (3 heads, MLP 768, 32×32×3
images in 4×4 patches, so 65 tokens), 200 calibration images, activation cost, exact OT, `'mean'` residual policy.

Run:  .venv/bin/python benchmarks/fusion.py [--threads 2] [--reps 3] [--no-hf] [--max-points 4000] [--device auto]
      .venv/bin/python benchmarks/fusion.py --vit exp128 --grid [--no-report] [--train-epochs 3] [--threads 1]

`--device` (default 'auto': the GPU when torch sees one, else the CPU) is where the models, the calibration images and
the fusion live (`FusionConfig.device`); the first line names it (`cl_scale.device.describe_device`). The models are
initialised on the CPU from the seed and moved there once, so every device fuses the same models. Every time is taken
with `cl_scale.device.timed`, which waits for the device before and after (a GPU runs its kernels asynchronously). Off
the CPU the split also shows the exact solves' copies to the CPU and back (`emd_transfer`, part of the OT solves) and
the peak GPU memory. The goal of issue 22: this benchmark's ViT fusion in under 1 s on one H100-class GPU, and on the
CPU no slower than before the option.

`--vit` selects the ViT: `bench192` (the default, above) or `exp128`, the width-128, 4-block ViT of the experiments
(4 heads, MLP 256, 28×28×1 images in 7×7 patches, so 17 tokens). `--grid` adds the Sinkhorn grid (issue 24, item 5):
for (a) a model fused with a permuted copy of itself and (b) two independent models, the exact fusion and the Sinkhorn
fusion at every λ of (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3), each Sinkhorn time printed as a ratio to the exact
fusion of the same pair, with its OT-solve time and its convergence warnings (the goal: no ratio above 2). The models
are random (or, with `--train-epochs N` and `--vit exp128`, trained N epochs on `mnist5k`, the calibration images then
being 200 training images); `--no-report` skips the report below (and the Hugging Face model).

The models are freshly initialised (not trained) and the calibration images are Gaussian noise: the arithmetic of a
fusion — two forward passes, one cost matrix and one exact OT per layer, the weight updates — does not depend on what
the models learned, so random models time it faithfully (only the EMD solver's iteration count could differ a little).
Prints, for our `cl_scale.models.ViT` and for Hugging Face `ViTForImageClassification` of the same size (when
`transformers` is installed):
- the fusion time (best of `--reps`) split into recording the activations, the costs (points and cost matrices),
  the OT solves, and the weight updates with the averaging; the CPU time of that run;
- the two plain forward passes over the calibration images (`model_output`, no hooks), timed in the same process:
  the floor of an activation-based fusion, since nothing in the cost can remove them;
- the peak resident memory above the level before the fusion (sampled by a thread);
- the ratio to vanilla averaging measured in the same process;
- the fusion with the input shortcuts turned off (every layer recorded by its outputs), and the largest difference
  between its fused parameters and the default's: the shortcuts change the arithmetic, not the result;
- the fusion with the long products in float64 instead of the activations' float32 (the previous precision), and the
  largest differences of its fused parameters and outputs to the default's: the precision the default gives up;
- with `--max-points N`, the opt-in fusion from at most N (sample, token) positions per layer (it changes the maps).
The 1-minute load average is printed before and after: above the thread count, the machine was shared and the times
are inflated (CPU times much less so). Nothing is asserted."""
import argparse, os, threading, time, warnings
import torch
import cl_scale.fusion as F
import cl_scale.ot as O
from cl_scale.models import ViT
from cl_scale.device import describe_device, timed

DEV = torch.device('cpu')          # where the benchmark computes: set once by main from --device

def rss_mb():
    "Current resident memory of this process (MB), from /proc"
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20

class PeakRSS:
    "Peak resident memory above the level at entry, sampled every 2 ms by a thread (ru_maxrss cannot be reset)"
    def __enter__(self):
        self.base = self.peak = rss_mb(); self.stop = threading.Event()
        def run():
            while not self.stop.wait(0.002): self.peak = max(self.peak, rss_mb())
        self.t = threading.Thread(target=run, daemon=True); self.t.start(); return self
    def __exit__(self, *a):
        self.stop.set(); self.t.join(); self.peak = max(self.peak, rss_mb())
    @property
    def mb(self): return self.peak - self.base

def timed_fuse(a, b, x, reps, **kw):
    "Best-of-`reps` fusion time and its split (from the run that was fastest), and the fused model of that run"
    best = None
    for _ in range(reps):
        tm, c = {}, time.process_time()
        fused, tm['total'] = timed(lambda: F.fuse([a, b], calib_data=x, timings=tm, device=DEV, **kw), DEV)
        tm['cpu'] = time.process_time() - c
        if best is None or tm['total'] < best[0]['total']: best = tm, fused
    return best

def best_time(f, reps):
    "Best-of-`reps` wall time of f() and the CPU time of that run"
    best = None
    for _ in range(reps):
        c = time.process_time(); _, t = timed(f, DEV)
        r = t, time.process_time() - c
        if best is None or r[0] < best[0]: best = r
    return best

def max_diff(m1, m2):
    "The largest absolute difference between the floating-point parameters of two models"
    s1, s2 = m1.state_dict(), m2.state_dict()
    return max((s1[k].double() - s2[k].double()).abs().max().item() for k in s1 if s1[k].is_floating_point())

def split(tm):
    moved = f" (of which EMD copies to the CPU and back {tm['emd_transfer']:.3f} s)" if 'emd_transfer' in tm else ''
    return (f"activations {tm['activations']:.2f} s + costs (points, cost matrices) {tm['costs']:.2f} s + "
            f"OT solves {tm['solves']:.2f} s{moved} + weight updates and averaging {tm['weights']:.2f} s")

def report(name, a, b, x, reps, max_points=None):
    n_par = sum(p.numel() for p in a.parameters())
    F.fuse([a, b], calib_data=x[:8], device=DEV)                            # warm up (allocator, kernels)
    if DEV.type == 'cuda': torch.cuda.reset_peak_memory_stats(DEV); gpu0 = torch.cuda.memory_allocated(DEV)
    with PeakRSS() as peak: timed_fuse(a, b, x, 1)
    mem = peak.mb
    gpu = f"; peak GPU memory above baseline {(torch.cuda.max_memory_allocated(DEV) - gpu0) / 2**20:.0f} MB" if DEV.type == 'cuda' else ''

    tm, fused = timed_fuse(a, b, x, reps)
    tf, cf = best_time(lambda: (F.model_output(a, x), F.model_output(b, x)), reps)
    tv, _ = best_time(lambda: F.vanilla_average([a, b]), reps)
    orig = F._by_inputs
    F._by_inputs = lambda mods, via_inputs: False                          # ablation: every layer by its outputs
    try: t_off, fused_off = timed_fuse(a, b, x, 1)
    finally: F._by_inputs = orig
    other = tm['total'] - sum(tm.get(k, 0) for k in ('activations', 'costs', 'solves', 'weights'))
    print(f"{name}: {n_par / 1e6:.2f} M parameters per model")
    print(f"  fusion {tm['total']:.2f} s = {split(tm)} (+ {other:.2f} s checks)")
    print(f"  CPU time of that run {tm['cpu']:.2f} s (all threads; ≈ {tm['cpu'] / torch.get_num_threads():.2f} s of wall time per thread if the cores were free)")
    print(f"  the two plain forward passes alone: {tf:.2f} s (CPU {cf:.2f} s) = {tf / tm['total']:.0%} of the fusion time")
    print(f"  peak memory above baseline: {mem:.0f} MB{gpu};  vanilla averaging {tv * 1e3:.0f} ms → fusion / vanilla = {tm['total'] / tv:.0f}×")
    print(f"  without the input shortcuts: {t_off['total']:.2f} s ({t_off['total'] / tm['total']:.2f}× the fusion time; CPU {t_off['cpu']:.2f} s); "
          f"largest fused-parameter difference to the default {max_diff(fused, fused_off):.1e}")
    orig = O._work_dtype                                                    # the costs' dtype rule lives in cl_scale.ot
    O._work_dtype = lambda *xs: torch.float64                               # ablation: float64 products
    try: t64, fused64 = timed_fuse(a, b, x, 1)
    finally: O._work_dtype = orig
    out_diff = (F.model_output(fused, x) - F.model_output(fused64, x)).abs().max().item()
    print(f"  with float64 products: {t64['total']:.2f} s ({t64['total'] / tm['total']:.2f}× the fusion time; CPU {t64['cpu']:.2f} s); "
          f"largest fused-parameter difference to the default {max_diff(fused, fused64):.1e}, output difference {out_diff:.1e}")
    if max_points:
        tp, _ = timed_fuse(a, b, x, reps, max_points=max_points)
        print(f"  opt-in max_points={max_points}: {tp['total']:.2f} s (CPU {tp['cpu']:.2f} s) = {split(tp)}")
    return tm

VITS = {   # name: (ViT configuration, calibration image shape, description)
    'bench192': (dict(image_size=32, patch_size=4, in_channels=3, d=192, depth=6, heads=3, mlp=768), (3, 32, 32),
                 "6 blocks, d = 192, MLP 768, 65 tokens"),
    'exp128': (dict(image_size=28, patch_size=7, in_channels=1, d=128, depth=4, heads=4, mlp=256), (1, 28, 28),
               "4 blocks, d = 128, MLP 256, 17 tokens"),
}
REGS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3)

def grid_fuse(a, b, x, reps, **kw):
    "Best-of-`reps` fusion time, the OT-solve time of that run, and the convergence warnings of the runs"
    best, n_warn = None, 0
    for _ in range(reps):
        tm = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            _, t = timed(lambda: F.fuse([a, b], calib_data=x, timings=tm, device=DEV, **kw), DEV)
        n_warn = max(n_warn, sum(issubclass(w.category, O.OTConvergenceWarning) for w in caught))
        if best is None or t < best[0]: best = (t, tm.get('solves', 0.0))
    return (*best, n_warn)

def grid(pairs, x, reps):
    "Exact and Sinkhorn fusion at every λ of REGS, per pair; returns the largest Sinkhorn / exact ratio"
    worst = 0.0
    for name, (a, b) in pairs.items():
        te, se, _ = grid_fuse(a, b, x, reps)
        print(f"  {name}: exact OT {te:.2f} s (OT solves {se:.2f} s)")
        for reg in REGS:
            t, s, w = grid_fuse(a, b, x, reps, solver='sinkhorn', reg=reg)
            worst = max(worst, t / te)
            print(f"    Sinkhorn λ = {reg:<5g}: {t:6.2f} s = {t / te:5.2f}× exact (OT solves {s:.2f} s)"
                  f"{f'; {w} OTConvergenceWarning(s)' if w else ''}", flush=True)
    return worst

def trained_pair(cfg, epochs):
    "Two ViTs (seeds 0 and 1) trained `epochs` epochs on mnist5k, and 200 of its training images"
    from cl_scale.data import load_dataset
    from cl_scale.fusion_experiments import train_classifier
    ds = load_dataset('mnist5k')
    x, y = ds.x_train.reshape(-1, 1, 28, 28), ds.y_train
    ms = []
    for seed in (0, 1):
        torch.manual_seed(seed); ms.append(train_classifier(ViT(**cfg).to(DEV), x, y, epochs=epochs, lr=2e-3, seed=seed))
    return ms, x[:200].clone().to(DEV)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--no-hf', action='store_true'); ap.add_argument('--max-points', type=int, default=None)
    ap.add_argument('--vit', choices=tuple(VITS), default='bench192', help="the ViT: bench192 (default) or exp128 (the experiments')")
    ap.add_argument('--grid', action='store_true', help="add the Sinkhorn λ grid: permuted copy and independent models")
    ap.add_argument('--no-report', action='store_true', help="skip the exact-fusion report (and the Hugging Face model)")
    ap.add_argument('--train-epochs', type=int, default=0, help="exp128 only: train the two models this many epochs on mnist5k")
    ap.add_argument('--device', default='auto', help="where to compute: auto (the GPU when there is one), cpu, cuda, cuda:N, mps")
    a = ap.parse_args()
    if a.train_epochs and a.vit != 'exp128': ap.error("--train-epochs needs --vit exp128 (mnist5k's 28×28 images)")
    global DEV
    try: DEV = F.fusion_device(a.device)                                   # the option resolved once (fusion needs float64: not MPS)
    except ValueError as e: ap.error(str(e))
    torch.set_num_threads(a.threads)
    print(f"device: {describe_device(DEV)}")
    print(f"torch {torch.__version__}, {a.threads} threads, {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}")
    cfg, shape, desc = VITS[a.vit]
    torch.manual_seed(0)
    x = torch.randn(200, *shape).to(DEV)                                    # drawn on the CPU: the same images on every device
    if a.train_epochs: (m1, m2), x = trained_pair(cfg, a.train_epochs)
    else: m1, m2 = ViT(**cfg).to(DEV), ViT(**cfg).to(DEV)
    what = f"trained {a.train_epochs} epochs on mnist5k" if a.train_epochs else "random"
    if not a.no_report:
        report(f"cl_scale ViT ({desc}, 200 images, {what})", m1, m2, x, a.reps, a.max_points)
    if a.grid:
        print(f"Sinkhorn grid, cl_scale ViT ({desc}, {what}; best of {a.reps}):")
        worst = grid({'(a) fused with a permuted copy of itself': (m1, F.permuted_copy(m1, 1)),
                      '(b) two independent models': (m1, m2)}, x, a.reps)
        print(f"  largest Sinkhorn / exact ratio: {worst:.2f}× ({'within' if worst <= 2 else 'ABOVE'} the goal of 2×)")
    if not a.no_hf and not a.no_report and a.vit == 'bench192':
        try:
            import transformers
            from transformers import ViTConfig, ViTForImageClassification
            transformers.logging.set_verbosity_error()
        except ImportError: print("transformers is not installed: Hugging Face ViT skipped"); return
        hc = ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=192, num_hidden_layers=6,
                       num_attention_heads=3, intermediate_size=768, num_labels=10)
        report(f"Hugging Face ViTForImageClassification (transformers {transformers.__version__}, same size)",
               ViTForImageClassification(hc).to(DEV), ViTForImageClassification(hc).to(DEV), x, a.reps, a.max_points)
    print(f"load average after: {os.getloadavg()[0]:.2f} (above {a.threads}: the machine was shared while measuring)")

if __name__ == '__main__': main()
