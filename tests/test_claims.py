"""Properties the claim criteria of `cl_scale.claims` must have whatever the numbers: a verdict does not depend on the
units or the offset of the measured quantity, mirrors when the claimed direction and the data are both flipped, and
a curve compared with itself never shows a shift. The notebook `04_claims` tests each criterion on chosen curves;
these tests draw the curves at random (hypothesis)."""
import math
import numpy as np
from hypothesis import given, settings, strategies as st
from cl_scale.claims import (difference, trend, half_rise, crossing, rise_width, shift, overlap, optimum, u_shape,
                             slope, sign_of)

G = np.array([0.01, 0.03, 0.1, 0.3, 1.0, 3.0])
finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
curves = st.lists(finite.map(lambda v: round(v, 3)), min_size=6, max_size=6).map(np.array)   # no rises below float resolution
scales = st.floats(0.1, 100)

def seeded(m, seed, noise=0.05, n=5):
    return np.asarray(m, float)[:, None] + noise * np.random.default_rng(seed).standard_normal((len(m), n))

@settings(max_examples=60, deadline=None)
@given(curves, st.integers(0, 10_000), scales, finite)
def test_trend_ignores_units_and_offset(m, seed, a, b):
    Y = seeded(m, seed)
    assert trend(G, Y).verdict == trend(G, a * Y + b).verdict

@settings(max_examples=60, deadline=None)
@given(curves, st.integers(0, 10_000))
def test_trend_mirrors(m, seed):
    "Claiming a rise on Y is the same test as claiming a fall on −Y"
    Y = seeded(m, seed)
    assert trend(G, Y, sign=+1).verdict == trend(G, -Y, sign=-1).verdict

@given(finite, st.floats(0, 5), finite, st.floats(0, 5))
def test_difference_is_antisymmetric(a, sa, b, sb):
    up, down = difference(a, sa, b, sb, +1), difference(b, sb, a, sa, +1)
    assert not (up == 'agrees' and down == 'agrees')
    assert (up == 'agrees') == (down == 'disagrees')          # with no minimum effect, b ≫ a is exactly "a ≪ b"

@settings(max_examples=100, deadline=None)
@given(curves, scales, finite)
def test_transition_points_ignore_units_and_offset(y, a, b):
    for f in (half_rise, rise_width):
        u, v = f(G, y), f(G, a * y + b)
        assert (math.isnan(u) and math.isnan(v)) or math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12)
    c, d = crossing(G, y, 0.0), crossing(G, a * y + b, b)
    assert (math.isnan(c) and math.isnan(d)) or math.isclose(c, d, rel_tol=1e-9)

@settings(max_examples=100, deadline=None)
@given(curves)
def test_transition_points_lie_inside_the_grid(y):
    for x in (half_rise(G, y), crossing(G, y)):
        assert math.isnan(x) or G[0] <= x <= G[-1]
    w = rise_width(G, y)
    assert math.isnan(w) or 0 <= w <= np.log10(G[-1] / G[0])

@settings(max_examples=25, deadline=None)
@given(curves, st.integers(0, 10_000))
def test_a_curve_never_shifts_from_itself(m, seed):
    Y = seeded(m, seed)
    for stat in (lambda v: optimum(G, v), lambda v: half_rise(G, v)):
        assert shift(stat, Y, Y, n_boot=200).verdict != 'agrees'

@given(st.lists(st.tuples(st.floats(0.01, 1), st.floats(1, 100)), min_size=2, max_size=4))
def test_overlap_ignores_the_order_of_the_intervals(ivs):
    a = overlap({i: iv for i, iv in enumerate(ivs)}).verdict
    b = overlap({i: iv for i, iv in reversed(list(enumerate(ivs)))}).verdict
    assert a == b

@settings(max_examples=25, deadline=None)
@given(curves, st.integers(0, 10_000), st.sampled_from([1, -1]))
def test_u_shape_of_a_clearly_monotone_curve_never_agrees(m, seed, sign):
    """A curve rising (or falling) by at least 0.2 per grid step — 9 standard errors of a difference at noise 0.05 and 5
    seeds — is never called U-shaped. (Where the curve is flat over part of the grid the criterion is statistical: its
    false-positive rate there is measured in `04_claims`, not asserted to be zero.)"""
    Y = seeded(sign * (np.sort(m) + 0.2 * np.arange(len(m))), seed)
    assert u_shape(G, Y, n_boot=200).verdict != 'agrees'

@settings(max_examples=25, deadline=None)
@given(st.floats(-0.1, 0.1), st.integers(0, 10_000))
def test_slope_sign_is_never_both_ways(b, seed):
    w = np.array([64, 128, 256, 512, 1024])
    s, iv = slope(w, seeded(0.3 + b * np.log2(w / 64), seed, 0.02), n_boot=300)
    assert {sign_of(s, iv, -1).verdict, sign_of(s, iv, +1).verdict} != {'agrees'}
    assert iv[0] <= iv[1]
