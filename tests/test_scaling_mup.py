"""`cl_scale.scaling` against microsoft/mup at γ0 = 1 and the same base width: the same model under this package's μP and
under mup (`set_base_shapes`, `MuReadout`, `MuSGD` / `MuAdam` / `MuAdamW`) trains the same function to round-off, and the
one difference — Adam's ε, which mup keeps fixed and this package scales with the gradient — is exactly that.
Skipped when mup is not installed (`pip install --no-deps mup`: its metadata pulls in torchvision, which is not needed)."""
import pytest
import torch
from torch import nn

mup = pytest.importorskip('mup')
from cl_scale.param import Parameterization
from cl_scale.scaling import (TinyMLP, TinyCNN, TinyTransformer, attention_scale, scale_model, scaled_optimizer, scaling_of,
                              mup_factors, mup_param_groups)

PMU = Parameterization('mup', 1.0, readout='random')
MAKE = {'mlp': lambda w, ro: TinyMLP(12, w, 3, depth=2, readout=ro),
        'cnn': lambda w, ro: TinyCNN(3, w, 2, depth=2, readout=ro),
        'transformer': lambda w, ro: TinyTransformer(16, 8, w, 2, depth=1, attn_scale=attention_scale(w // 4, 8, PMU), readout=ro)}
MU_OPT = {'sgd': mup.MuSGD, 'momentum': mup.MuSGD, 'adam': mup.MuAdam, 'adamw': mup.MuAdamW}

@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)

def _data(name):
    g = torch.Generator().manual_seed(3)
    if name == 'mlp': return torch.randn(16, 12, generator=g), torch.randn(16, 3, generator=g)
    if name == 'cnn': return torch.randn(8, 3, 4, 4, generator=g), torch.randn(8, 2, generator=g)
    return torch.randint(0, 16, (4, 8), generator=g), torch.randn(4, 8, 2, generator=g)

def _pair(name, width=64, base=16):
    make = MAKE[name]
    torch.manual_seed(0)
    ours = scale_model(make(width, nn.Linear), make(base, nn.Linear), PMU, delta=make(2 * base, nn.Linear))
    theirs = make(width, mup.MuReadout)
    mup.set_base_shapes(theirs, make(base, mup.MuReadout), delta=make(2 * base, mup.MuReadout))
    at_base = scale_model(make(base, nn.Linear), make(base, nn.Linear), PMU, delta=make(2 * base, nn.Linear))
    k = mup_factors(ours)
    with torch.no_grad():
        for n, q in theirs.named_parameters(): q.copy_(k[n] * ours.get_parameter(n))
    return ours, theirs, at_base

def _train(model, opt, x, y, steps=20):
    outs = [model(x).detach()]
    for _ in range(steps):
        opt.zero_grad(); (0.5 * (model(x) - y).pow(2).sum(-1).mean()).backward(); opt.step(); outs.append(model(x).detach())
    return torch.stack(outs)

CASES = {'sgd': dict(lr=0.2), 'momentum': dict(lr=0.05, momentum=0.9), 'adam': dict(lr=0.01, eps=1e-30),
         'adamw': dict(lr=0.01, eps=1e-30, weight_decay=0.1)}

@pytest.mark.parametrize('name', MAKE)
@pytest.mark.parametrize('rule', CASES)
def test_same_trajectory_as_mup(name, rule):
    kw = CASES[rule]
    ours, theirs, at_base = _pair(name)
    x, y = _data(name)
    a = _train(ours, scaled_optimizer(ours, opt=rule, **kw), x, y)
    extra = {k: v for k, v in kw.items() if k not in ('lr', 'eps', 'weight_decay')}
    groups = mup_param_groups(at_base, theirs, kw['lr'], rule, kw.get('eps'), kw.get('weight_decay', 0.0))
    b = _train(theirs, MU_OPT[rule](groups, lr=kw['lr'], **extra), x, y)
    assert float((a[1:] - a[0]).abs().max()) > 1e-3                      # it trained
    assert float((a - b).abs().max()) < 1e-12 * float(a.abs().max())

@pytest.mark.parametrize('name', ['mlp', 'transformer'])
def test_adam_eps_is_the_one_difference(name):
    "At PyTorch's ε the two differ; giving our optimizer mup's ε (fixed at every width) removes the difference"
    x, y = _data(name)
    ours, theirs, at_base = _pair(name)
    groups = mup_param_groups(at_base, theirs, 0.01, 'adam', 1e-8)
    eps_mup = {n: g['eps'] for n, g in zip(dict(theirs.named_parameters()), groups)}
    b = _train(theirs, mup.MuAdam(groups, lr=0.01), x, y)
    a = _train(ours, scaled_optimizer(ours, 0.01, 'adam', eps=1e-8), x, y)
    assert float((a - b).abs().max()) > 1e-9 * float(a.abs().max())
    ours, theirs, at_base = _pair(name)
    k, plan = mup_factors(ours), scaling_of(ours)
    lr = {id(p): g['lr'] for g in scaled_optimizer(ours, 0.01, 'adam').param_groups for p in g['params']}
    for n, p in ours.named_parameters():                                  # ours is ε0·(gradient scale); mup's is m× that
        ratio = 1e-8 * plan.multipliers(n, 'adam')['eps'] / (k[n] * eps_mup[n])
        assert abs(ratio - (1.0 if plan.params[n].role == 'readout_bias' else 1 / plan.width_mult)) < 1e-12
    as_mup = torch.optim.Adam([dict(params=[p], lr=lr[id(p)], eps=k[n] * eps_mup[n]) for n, p in ours.named_parameters()], lr=0.01)
    a = _train(ours, as_mup, x, y)
    assert float((a - b).abs().max()) < 1e-12 * float(a.abs().max())

def test_mup_correspondence_needs_gamma0_one_and_a_base_at_base_width():
    make = MAKE['mlp']
    m = scale_model(make(64, nn.Linear), make(16, nn.Linear), Parameterization('mup', 0.5))
    with pytest.raises(ValueError, match='mup has no γ0'): mup_factors(m)
    ours, theirs, _ = _pair('mlp')
    with pytest.raises(ValueError, match='base must be at its base width'): mup_param_groups(ours, theirs, 0.1)
