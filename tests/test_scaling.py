"""Checks of `cl_scale.scaling` that do not belong in the notebook: a scaled model survives pickling and torch.func,
no optimizer outside the four with a derived rule is ever accepted, and more bad input (each error names the layer)."""
import copy, io, math
import pytest
import torch
from torch import nn
from cl_scale.param import Parameterization, MLP
from cl_scale.scaling import (ROLES, RULE_NAMES, TinyMLP, TinyCNN, TinyTransformer, check_optimizer, scale_model,
                              scaled_optimizer, scaling_of, rule_multipliers)

PMU = Parameterization('mup', 0.5)

def _mlp(w, **kw): return TinyMLP(6, w, 2, **kw)

@pytest.mark.parametrize('readout', ['zero', 'centered', 'random'])
def test_a_scaled_model_survives_pickling_copying_and_torch_func(readout):
    p = Parameterization('mup', 0.5, readout=readout)
    m = scale_model(_mlp(32), _mlp(8), p)
    with torch.no_grad(): m.readout.weight.add_(0.1)                      # so that every readout gives a nonzero output
    x = torch.randn(5, 6)
    buf = io.BytesIO(); torch.save(m, buf); buf.seek(0)
    for other in (copy.deepcopy(m), torch.load(buf, weights_only=False)):
        assert torch.equal(other(x), m(x))
        assert scaling_of(other).roles() == scaling_of(m).roles()
    params = {n: p.detach() for n, p in m.named_parameters()}
    g = torch.func.grad(lambda P: torch.func.functional_call(m, P, (x,)).pow(2).sum())(params)
    m.zero_grad(); m(x).pow(2).sum().backward()
    for n, q in m.named_parameters(): assert torch.allclose(g[n], q.grad, atol=1e-6), n

def test_no_optimizer_without_a_rule_is_accepted():
    "Every optimizer class torch ships is refused except SGD, Adam and AdamW"
    m = scale_model(_mlp(32), _mlp(8), PMU)
    classes = [c for c in vars(torch.optim).values() if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer]
    assert len(classes) > 8
    for cls in classes:
        if cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
            assert check_optimizer(cls) in RULE_NAMES
            assert isinstance(scaled_optimizer(m, 0.1, cls), cls)
        else:
            with pytest.raises(ValueError, match="rules exist for 'sgd' .* 'adamw' \\(torch.optim.AdamW\\)"): scaled_optimizer(m, 0.1, cls)

def test_sgd_entry_point_gate():
    "The call for `param.make_optimizer`: plain SGD and momentum pass; Adam, AdamW, other optimizers and unscaled weight decay do not"
    gate = lambda opt, **kw: check_optimizer(opt, kw, allowed=('sgd', 'momentum'), scales_weight_decay=False)
    assert gate(torch.optim.SGD) == 'sgd' and gate(torch.optim.SGD, momentum=0.9) == 'momentum'
    for opt, msg in ((torch.optim.AdamW, "scaled_optimizer\\(model, lr, 'adamw'"), (torch.optim.RMSprop, 'no scaling rule is derived'),
                     ('sgd', None)):
        if msg is None:
            with pytest.raises(ValueError, match='scales only the learning rate'): gate(opt, weight_decay=0.1)
        else:
            with pytest.raises(ValueError, match=msg): gate(opt)
    with pytest.raises(ValueError, match="allowed= names \\['lbfgs'\\]"): check_optimizer('sgd', allowed=('lbfgs',))

def test_rule_factors_are_powers_of_gamma_and_m():
    for role in ROLES:
        for rule in RULE_NAMES:
            f1, f2 = rule_multipliers(rule, role, 'mup', 1.0, 1.0), rule_multipliers(rule, role, 'mup', 2.0, 16.0)
            assert all(v == 1.0 for v in f1.values())                       # the plain optimizer at the base width, γ0 = 1
            assert all(math.isfinite(v) and v > 0 for v in f2.values())

def test_more_bad_input():
    class Kernel(nn.Module):                                                # the kernel grows with width
        def __init__(self, w): super().__init__(); self.c = nn.Conv2d(3, w, w // 8)
    with pytest.raises(ValueError, match=r"c.weight \(Conv2d\): its kernel dimension\(s\) \[2, 3\] change with width"):
        scale_model(Kernel(32), Kernel(16), PMU)
    class InputNorm(nn.Module):                                             # a LayerNorm over the fixed input features
        def __init__(self, w): super().__init__(); self.ln, self.fc = nn.LayerNorm(6), nn.Linear(6, w)
    with pytest.raises(ValueError, match=r"ln.weight \(LayerNorm weight \(6,\)\): a norm over dimensions that do not grow"):
        scale_model(InputNorm(32), InputNorm(8), PMU)
    assert scaling_of(scale_model(InputNorm(32), InputNorm(8), PMU, roles={'ln.weight': 'vector', 'ln.bias': 'vector'})).roles()['ln.bias'] == 'vector'
    with pytest.raises(ValueError, match=r"layers.0.bias \(Linear bias\) can be declared one of \('vector', 'readout_bias'\), not 'hidden'"):
        scale_model(_mlp(32), _mlp(8), PMU, roles={'layers.0.bias': 'hidden'})
    with pytest.raises(ValueError, match="the delta model's parameters are not the model's: missing from the delta"):
        scale_model(_mlp(8), _mlp(8), PMU, delta=_mlp(16, depth=3))
    with pytest.raises(ValueError, match='call scale_model with init=False'):
        scale_model(MLP(4, 32, 1, 1, PMU), MLP(4, 8, 1, 1, PMU), PMU, init=True)
    with pytest.raises(TypeError, match='model must be an nn.Module'): scale_model('model', _mlp(8), PMU)

def test_frozen_parameters_keep_their_multiplier_and_are_left_out_of_the_optimizer():
    m = scale_model(_mlp(32), _mlp(8), PMU)
    m.layers[0].requires_grad_(False)
    opt = scaled_optimizer(m, 0.1, 'adam')
    assert sum(len(g['params']) for g in opt.param_groups) == len([p for p in m.parameters() if p.requires_grad])
    assert len(m.layers[0]._forward_pre_hooks) == 1

def test_every_layer_type_is_classified():
    p = Parameterization('ntp')
    for make in (lambda w: TinyCNN(width=w), lambda w: TinyTransformer(width=w, depth=1)):
        s = scaling_of(scale_model(make(64), make(16), p))
        assert set(s.roles().values()) <= set(ROLES) and 'readout' in s.roles().values()
        assert s.width_mult == 4 and s.gamma == 1.0
