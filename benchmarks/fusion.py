"""Benchmark of OT fusion (issue: transformer fusion II, §3): two 6-block ViTs of width 192 (3 heads, MLP 768, 32×32×3
images in 4×4 patches, so 65 tokens), 200 calibration images, activation cost, exact OT, `'mean'` residual policy.

Run:  .venv/bin/python benchmarks/fusion.py [--threads 2] [--reps 3] [--no-hf]

The models are freshly initialised (not trained) and the calibration images are Gaussian noise: the arithmetic of a
fusion — two forward passes, one cost matrix and one exact OT per layer, the weight updates — does not depend on what
the models learned, so random models time it faithfully (only the EMD solver's iteration count could differ a little).
Prints, for our `cl_scale.models.ViT` and for Hugging Face `ViTForImageClassification` of the same size (when
`transformers` is installed): the fusion time (best of `--reps`) split into activation collection, transport maps
(points, cost matrices and OT solves) and weight updates/averaging, with the CPU time of that run; the peak resident
memory above the level before the fusion (sampled by a thread);
the ratio to vanilla averaging measured in the same process; and the time with the wide-layer input shortcut turned off
(every layer recorded by its outputs), to show what the shortcut buys. The 1-minute load average is printed before and
after: above the thread count, the machine was shared and the times are inflated. Nothing is asserted."""
import argparse, os, threading, time
import torch
import cl_scale.fusion as F
from cl_scale.models import ViT

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

def timed_fuse(a, b, x, reps):
    "Best-of-`reps` fusion time and its split (from the run that was fastest)"
    best = None
    for _ in range(reps):
        tm = {}
        t, c = time.perf_counter(), time.process_time()
        F.fuse([a, b], calib_data=x, timings=tm)
        tm['total'], tm['cpu'] = time.perf_counter() - t, time.process_time() - c
        if best is None or tm['total'] < best['total']: best = tm
    return best

def best_time(f, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)

def report(name, a, b, x, reps):
    n_par = sum(p.numel() for p in a.parameters())
    F.fuse([a, b], calib_data=x[:8])                                        # warm up (allocator, kernels)
    with PeakRSS() as peak: timed_fuse(a, b, x, 1)
    mem = peak.mb
    tm = timed_fuse(a, b, x, reps)
    tv = best_time(lambda: F.vanilla_average([a, b]), reps)
    orig = F._by_inputs
    F._by_inputs = lambda mod, via_inputs: False                           # ablation: every layer by its outputs
    try: t_off = timed_fuse(a, b, x, 1)['total']
    finally: F._by_inputs = orig
    other = tm['total'] - tm.get('activations', 0) - tm.get('ot', 0) - tm.get('weights', 0)
    print(f"{name}: {n_par / 1e6:.2f} M parameters per model")
    print(f"  fusion {tm['total']:.2f} s = activations {tm['activations']:.2f} s + transport maps (points, costs, OT) "
          f"{tm['ot']:.2f} s + weight updates and averaging {tm['weights']:.2f} s (+ {other:.2f} s checks)")
    print(f"  CPU time of that run {tm['cpu']:.2f} s (all threads; ≈ {tm['cpu'] / torch.get_num_threads():.2f} s of wall time per thread if the cores were free)")
    print(f"  peak memory above baseline: {mem:.0f} MB;  vanilla averaging {tv * 1e3:.0f} ms → fusion / vanilla = {tm['total'] / tv:.0f}×")
    print(f"  without the wide-layer input shortcut: {t_off:.2f} s ({t_off / tm['total']:.2f}× the fusion time)")
    return tm

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--reps', type=int, default=3)
    ap.add_argument('--no-hf', action='store_true'); a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}")
    torch.manual_seed(0)
    x = torch.randn(200, 3, 32, 32)
    cfg = dict(image_size=32, patch_size=4, in_channels=3, d=192, depth=6, heads=3, mlp=768)
    report("cl_scale ViT (6 blocks, d = 192, MLP 768, 65 tokens, 200 images)", ViT(**cfg), ViT(**cfg), x, a.reps)
    if not a.no_hf:
        try:
            import transformers
            from transformers import ViTConfig, ViTForImageClassification
            transformers.logging.set_verbosity_error()
        except ImportError: print("transformers is not installed: Hugging Face ViT skipped"); return
        hc = ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=192, num_hidden_layers=6,
                       num_attention_heads=3, intermediate_size=768, num_labels=10)
        report(f"Hugging Face ViTForImageClassification (transformers {transformers.__version__}, same size)",
               ViTForImageClassification(hc), ViTForImageClassification(hc), x, a.reps)
    print(f"load average after: {os.getloadavg()[0]:.2f} (above {a.threads}: the machine was shared while measuring)")

if __name__ == '__main__': main()
