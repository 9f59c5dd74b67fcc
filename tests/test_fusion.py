"""Checks of `cl_scale.fusion` beyond the notebook: permutation recovery over many random permutations and model
shapes (hypothesis), weight-based recovery, and heterogeneous BERT fusion in both directions."""
import copy
import pytest
import torch
from hypothesis import given, settings, strategies as st
from cl_scale.models import ViT, BERT
from cl_scale.fusion import align, fuse, permuted_copy, vanilla_average

@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10**6), heads=st.sampled_from([1, 2, 4]), depth=st.integers(1, 2), bert=st.booleans(),
       per_head=st.booleans())
def test_permuted_copy_is_recovered(seed, heads, depth, bert, per_head):
    torch.manual_seed(seed)
    if bert:
        m = BERT(vocab_size=40, max_len=8, d=16, depth=depth, heads=heads, mlp=24).double()
        x = torch.randint(1, 40, (24, 8))
    else:
        m = ViT(d=16, depth=depth, heads=heads, mlp=24).double()
        x = torch.randn(24, 1, 8, 8, dtype=torch.float64)
    p = permuted_copy(m, seed=seed + 1)
    torch.testing.assert_close(p(x), m(x), rtol=1e-9, atol=1e-10)
    back = align(p, m, x, per_head=per_head)
    torch.testing.assert_close(back(x), m(x), rtol=1e-8, atol=1e-9)

def test_weight_based_recovery():
    torch.manual_seed(0)
    m = ViT(d=24, depth=2, heads=4, mlp=32).double()
    x = torch.randn(16, 1, 8, 8, dtype=torch.float64)
    back = align(permuted_copy(m, seed=3), m, cost='wts')          # no calibration data needed
    torch.testing.assert_close(back(x), m(x), rtol=1e-8, atol=1e-9)

@pytest.mark.parametrize('wide_is_anchor', [False, True])
def test_heterogeneous_bert_both_ways(wide_is_anchor):
    torch.manual_seed(0)
    narrow = BERT(vocab_size=50, max_len=12, d=24, depth=2, heads=4, mlp=32).double()
    wide = BERT(vocab_size=50, max_len=12, d=40, d_qkv=48, depth=2, heads=4, mlp=72).double()
    ids = torch.randint(1, 50, (30, 12))
    models, anchor = ([narrow, wide], 1) if wide_is_anchor else ([wide, narrow], 1)
    f = fuse(models, anchor=anchor, calib_data=ids, solver='sinkhorn', reg=0.05)
    ref = models[anchor]
    for k, v in ref.state_dict().items(): assert f.state_dict()[k].shape == v.shape, k
    out = f(ids)
    assert torch.isfinite(out).all() and out.std() > 0
