"The fusion claims' criterion, checked by simulation: how often it says 'agrees' when there is no difference, and when there is one; and the device option of the fusion experiments (shifts, evaluation, training jobs)"
import numpy as np
from cl_scale.fusion_experiments import paired_claim, k_pairs

def _rate(n_pairs, effect, k=None, draws=4000, seed=0):
    "Fraction of `draws` simulated experiments (accuracies 0.7 ± 0.02 per pair, a shared pair effect) that the claim calls 'agrees'"
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(draws):
        pair = rng.normal(0, 0.03, n_pairs)                       # what a pair of parents shares (both methods see it)
        a = 0.7 + effect + pair + rng.normal(0, 0.02, n_pairs)
        b = 0.7 + pair + rng.normal(0, 0.02, n_pairs)
        hits += paired_claim('A beats B', a, b, **({} if k is None else {'k': k})).verdict == 'agrees'
    return hits / draws

def test_no_difference_is_rarely_called_a_win():
    "Five pairs, no true difference: 'agrees' about 2.5 % of the time (one-sided 97.5 %), not the ~6 % a fixed 2 SE gives"
    r = _rate(5, 0.0)
    assert r < 0.04, r
    assert abs(k_pairs(5) - 2.776) < 1e-3

def test_a_real_difference_is_found():
    "Five pairs, a difference of 1.5 times the per-pair noise of the difference: found most of the time"
    assert _rate(5, 0.05, draws=1000) > 0.8

def test_a_reversed_difference_is_never_a_win():
    assert _rate(5, -0.05, draws=1000) == 0.0

# ---- the device option (issue 22) ----
import pytest, torch
from cl_scale.models import ViT
from cl_scale.fusion_experiments import random_shift, accuracy, ensemble_accuracy, _train_job, _job_spec

def test_random_shifts_follow_the_images_device():
    "The offsets are drawn on the CPU from the seed's generator (the same shifts on every device) and applied where the images are"
    x = torch.randn(7, 2, 6, 6)
    a = random_shift(x, 2, torch.Generator().manual_seed(3), fill=-1.0)
    k, g = 2, torch.Generator().manual_seed(3)                              # the formula as it was before the option: CPU only
    xp = torch.nn.functional.pad(x, (k, k, k, k), value=-1.0).permute(0, 2, 3, 1)
    dy, dx = (torch.randint(0, 2 * k + 1, (7,), generator=g) for _ in range(2))
    rows, cols = dy[:, None] + torch.arange(6), dx[:, None] + torch.arange(6)
    assert torch.equal(a, xp[torch.arange(7)[:, None, None], rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2))
    m = random_shift(x.to('meta'), 2, torch.Generator().manual_seed(3))     # 'meta' stands in for a GPU: nothing is made on the CPU
    assert m.device.type == 'meta' and m.shape == x.shape

def test_evaluation_reports_data_elsewhere_than_the_model():
    torch.manual_seed(0)
    m, x, y = ViT(d=8, depth=1, heads=2, mlp=16), torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    with pytest.raises(ValueError, match='accuracy: model on cpu, x on cpu, y on meta'): accuracy(m, x, y.to('meta'))
    with pytest.raises(ValueError, match='ensemble_accuracy: model 0 on cpu, model 1 on cpu, x on meta'): ensemble_accuracy([m, m], x.to('meta'), y)

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_a_training_job_resolves_its_device_where_it_runs():
    "A job carries the option (a string) and resolves it where it runs: a device that is not there fails at once, naming it"
    job = dict(name='m', vit=dict(image_size=8, patch_size=2, d=8, depth=1, heads=2, mlp=16), seed=0, epochs=1, lr=1e-3,
               x=torch.randn(8, 1, 8, 8), y=torch.randint(0, 10, (8,)), device='cuda')
    with pytest.raises(ValueError, match="device 'cuda' was asked for"): _train_job(job)
    r = _train_job({**job, 'device': 'cpu'})
    assert all(v.device.type == 'cpu' for v in r['state'].values())
    assert 'device' not in _job_spec(job)                                  # where a parent was trained does not define it
