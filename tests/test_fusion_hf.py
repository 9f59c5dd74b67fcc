"""Fusion of Hugging Face models (`ViTForImageClassification`, `BertForMaskedLM`) built from small configs: permutation
recovery over random permutations and shapes, self-fusion, heterogeneous widths, the tied MLM decoder, dict
calibration inputs with token types. Skipped when `transformers` (the optional extra `cl_scale[hf]`) is absent."""
import copy
import pytest
import torch
from hypothesis import given, settings, strategies as st

transformers = pytest.importorskip("transformers")
from transformers import ViTConfig, ViTForImageClassification, BertConfig, BertForMaskedLM
from cl_scale.fusion import align, fuse, permuted_copy, vanilla_average, model_output, graph_for, Tie
from test_fusion import assert_same_fusion

transformers.logging.set_verbosity_error()

def hf_vit(d=16, mlp=24, heads=2, depth=2, **kw):
    return ViTForImageClassification(ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=d, intermediate_size=mlp,
                                               num_hidden_layers=depth, num_attention_heads=heads, num_labels=10, **kw)).double()

def hf_bert(d=16, mlp=24, heads=2, depth=2, **kw):
    return BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=d, intermediate_size=mlp, num_hidden_layers=depth,
                                      num_attention_heads=heads, max_position_embeddings=8, **kw)).double()

def tied(m): return m.cls.predictions.decoder.weight is m.bert.embeddings.word_embeddings.weight

def close(a, b, tol=1e-9): torch.testing.assert_close(a, b, rtol=tol, atol=tol)

def data(bert, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    if not bert: return torch.randn(n, 1, 8, 8, dtype=torch.float64, generator=g)
    ids = torch.randint(1, 40, (n, 8), generator=g); ids[: n // 4, 5:] = 0      # some padded sequences
    return ids

@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10**6), heads=st.sampled_from([1, 2, 4]), depth=st.integers(1, 2), bert=st.booleans(),
       per_head=st.booleans())
def test_permuted_copy_is_recovered(seed, heads, depth, bert, per_head):
    torch.manual_seed(seed)
    m = (hf_bert if bert else hf_vit)(heads=heads, depth=depth)
    x = data(bert, seed=seed)
    p = permuted_copy(m, seed=seed + 1)
    close(model_output(p, x), model_output(m, x), 1e-10)
    assert any((p.state_dict()[k] - v).abs().max() > 1e-3 for k, v in m.state_dict().items())   # really permuted
    back = align(p, m, x, per_head=per_head)
    close(model_output(back, x), model_output(m, x))
    for k, v in m.state_dict().items(): close(back.state_dict()[k], v)

@pytest.mark.parametrize('bert', [False, True])
def test_weight_based_recovery_and_self_fusion(bert):
    torch.manual_seed(1)
    m, x = (hf_bert if bert else hf_vit)(d=24, mlp=64, heads=4), data(bert)    # MLP > 2d: fc1 recorded by its inputs
    back = align(permuted_copy(m, seed=5), m, cost='wts')                       # no calibration data needed
    close(model_output(back, x), model_output(m, x))
    for cost in ('acts', 'wts'): close(model_output(fuse([m, copy.deepcopy(m)], calib_data=x, cost=cost), x), model_output(m, x), 1e-10)
    close(model_output(vanilla_average([m, m]), x), model_output(m, x), 1e-12)
    close(model_output(fuse([m, permuted_copy(m, seed=6)], calib_data=x), x), model_output(m, x))

@pytest.mark.parametrize('bert', [False, True])
@pytest.mark.parametrize('wide_is_anchor', [False, True])
def test_heterogeneous(bert, wide_is_anchor):
    torch.manual_seed(2)
    mk = hf_bert if bert else hf_vit
    narrow, wide, x = mk(d=16, mlp=24, heads=2), mk(d=24, mlp=48, heads=2), data(bert)
    models = [narrow, wide] if wide_is_anchor else [wide, narrow]
    f = fuse(models, anchor=1, calib_data=x, solver='sinkhorn', reg=0.05)
    for k, v in models[1].state_dict().items(): assert f.state_dict()[k].shape == v.shape, k
    assert f.config.hidden_size == models[1].config.hidden_size
    out = model_output(f, x)
    assert torch.isfinite(out).all() and out.std() > 0
    if bert: assert tied(f)

def test_bert_tie_token_types_and_dict_inputs():
    torch.manual_seed(3)
    m = hf_bert()
    assert tied(m) and any(isinstance(n, Tie) for n in graph_for(m))
    ids = data(True)
    batch = dict(input_ids=ids, attention_mask=(ids != 0).long(), token_type_ids=(torch.arange(8) >= 4).long().expand(len(ids), 8))
    p = permuted_copy(m, seed=7)
    assert tied(p)
    back = align(p, m, batch, qk='tied')
    assert tied(back)
    close(model_output(back, batch), model_output(m, batch))
    fused = fuse([m, hf_bert()], calib_data=batch)
    assert tied(fused) and m.training and fused.training        # modes are left as they were (HF builds in train mode)
    untied = hf_bert(tie_word_embeddings=False)
    assert not tied(untied) and not any(isinstance(n, Tie) for n in graph_for(untied))
    close(model_output(align(permuted_copy(untied, seed=8), untied, ids), ids), model_output(untied, ids))

def test_bad_input():
    v, b = hf_vit(), hf_bert()
    with pytest.raises(TypeError, match='architectures differ'): align(v, b, data(False))
    with pytest.raises(ValueError, match='expects pixel_values'): align(v, hf_vit(), torch.randn(3, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match='expects input_ids'): align(b, hf_bert(), torch.randn(3, 8))
    with pytest.raises(ValueError, match='depth'): align(hf_vit(depth=1), v, data(False))
    with pytest.raises(ValueError, match='different lengths'):
        align(b, hf_bert(), dict(input_ids=data(True), attention_mask=torch.ones(3, 8, dtype=torch.long)))

@pytest.mark.parametrize('bert', [False, True])
def test_fast_costs_compute_the_definition(bert):
    "Two independent models: the fast cost path (shared Q/K/V input, input Gram of the MLP) gives the plain definition's fusion"
    torch.manual_seed(4)
    mk = lambda: (hf_bert if bert else hf_vit)(d=24, mlp=96, heads=4)
    assert_same_fusion(mk(), mk(), data(bert, n=32), 'emd', 1e-12)
