"The fusion claims' criterion, checked by simulation: how often it says 'agrees' when there is no difference, and when there is one"
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
