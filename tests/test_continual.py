"""Checks of `cl_scale.continual` that do not belong in the notebook: properties of `cl_metrics` over random
matrices (hypothesis), the learning-rate schedule the loop really applies, divergence in the middle of a
stream, and reproducibility."""
import math
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st, assume
from cl_scale.param import MLP, Parameterization, make_optimizer, lr_mults
from cl_scale.data import make_stream
from cl_scale.continual import *

def _acc(T, seed):
    return np.random.default_rng(seed).uniform(0, 1, (T, T))

@settings(max_examples=60, deadline=None)
@given(T=st.integers(2, 8), seed=st.integers(0, 10**6))
def test_metric_properties(T, seed):
    a = _acc(T, seed)
    m = cl_metrics(a)
    # the running-max reference is never below a[i, i], so CF is at least the diagonal-reference forgetting
    assert m['CF'] >= np.mean([a[i, i] - a[-1, i] for i in range(T - 1)]) - 1e-12
    assert -1 <= m['CF'] <= 1 and m['CFr'] <= 1
    assert math.isclose(m['LE'], 1 - m['LA']) and math.isclose(m['AE'], 1 - m['AA'])
    # the upper triangle (tasks not trained yet) does not enter any metric
    b = a.copy(); b[np.triu_indices(T, 1)] = np.random.default_rng(seed + 1).uniform(0, 1, T * (T - 1) // 2)
    assert cl_metrics(b) == m
    # the loss analogues of the test error are the accuracy metrics: a rise of error = a drop of accuracy
    e = cl_metrics(a, 1 - a)
    assert math.isclose(e['CF_loss'], m['CF'], abs_tol=1e-12) and math.isclose(e['AL'], m['AE'], abs_tol=1e-12)
    assert math.isclose(e['LL'], m['LE'], abs_tol=1e-12)

@settings(max_examples=30, deadline=None)
@given(T=st.integers(2, 6), seed=st.integers(0, 10**6))
def test_no_forgetting_when_final_row_is_best(T, seed):
    a = _acc(T, seed)
    a[-1] = np.maximum(a[-1], a.max(0))            # the final accuracies are every task's best
    m = cl_metrics(a)
    assert m['CF'] <= 0 and m['CFr'] <= 0

class _LoggingSGD(torch.optim.SGD):
    "Plain SGD that records the learning rate of its first group at every step"
    def __init__(self, *a, **kw): super().__init__(*a, **kw); self.lrs = []
    def step(self, closure=None):
        self.lrs.append(self.param_groups[0]['lr']); return super().step(closure)

def test_cosine_restarts_each_task():
    stream = make_stream(kind='permuted', p=0.5, n_tasks=2, n_train=300)     # 300 images / 128 → 3 steps per epoch
    model = MLP(stream.d_in, 32, 1, stream.d_out, Parameterization('mup', gamma0=0.5))
    holder = {}
    def opt(m, lr):
        holder['o'] = o = _LoggingSGD(make_optimizer(m, lr).param_groups, lr=lr); return o
    cfg = TrainConfig(lr=2.0, epochs=2, n_probe=0)
    r = train_continual(model, stream, cfg, optimizer=opt, progress=False)
    base = 2.0 * model.param.lr_mult(32)
    S = 6
    expect = [base * 0.5 * (1 + math.cos(math.pi * s / S)) for s in range(S)] * 2
    np.testing.assert_allclose(holder['o'].lrs, expect, rtol=1e-12)
    assert r.task_end_steps == [6, 12]
    # the default optimizer is plain SGD: no momentum, no weight decay
    g = make_optimizer(model, 1.0).param_groups[0]
    assert g['momentum'] == 0 and g['weight_decay'] == 0

def test_divergence_mid_stream_keeps_earlier_rows():
    stream = make_stream(kind='permuted', p=0.5, n_tasks=3, n_train=256)
    model = MLP(stream.d_in, 32, 2, stream.d_out, Parameterization('mup', gamma0=1.0))
    def sabotage(t, acc_row, loss_row):
        if t == 0:
            with torch.no_grad(): model.layers[0].weight.fill_(float('nan'))
    r = train_continual(model, stream, TrainConfig(lr=5.0, n_probe=16, n_ntk=4), progress=False, on_task_end=sabotage)
    assert r.diverged and r.diverged_at['task'] == 1 and r.diverged_at['step'] == 2     # 2 steps per task
    assert np.isfinite(r.acc[0]).all() and np.isnan(r.acc[1:]).all() and np.isnan(r.loss[1:]).all()
    assert math.isnan(r.metrics['AA'])                                                  # never a silently wrong number
    assert len(r.features) == 2 and r.task_end_steps == [2]

def test_same_seed_same_run_float64():
    stream = make_stream(kind='split', classes_per_task=2, n_tasks=2)
    def run(seed):
        torch.manual_seed(0)
        m = MLP(stream.d_in, 64, 2, stream.d_out, Parameterization('mup', gamma0=0.5), n_heads=2, dtype=torch.float64)
        return train_continual(m, stream, TrainConfig(seed=seed, n_probe=32, n_ntk=8), progress=False)
    a, b, c = run(0), run(0), run(1)
    np.testing.assert_array_equal(a.acc, b.acc); np.testing.assert_array_equal(a.train_loss, b.train_loss)
    assert not np.array_equal(a.train_loss, c.train_loss)                                # the seed sets the batch order
    assert a.features[0].dtype == torch.float64

def test_joint_training_through_the_same_loop():
    from cl_scale.data import joint_task, TaskStream
    stream = make_stream(kind='split', classes_per_task=2, n_tasks=3)
    joint = TaskStream([joint_task(stream)], stream.config, stream.in_shape, stream.n_heads, stream.d_out)
    torch.manual_seed(0)
    m = MLP(stream.d_in, 64, 2, stream.d_out, Parameterization('mup', gamma0=0.5), n_heads=3)
    r = train_continual(m, joint, TrainConfig(epochs=2, n_probe=32, n_ntk=8), progress=False)
    assert r.acc.shape == (1, 1) and r.acc[0, 0] > 0.9 and math.isnan(r.metrics['CF'])
    # each task's head was trained on its own samples: evaluate per task
    accs = [evaluate(m, t)[0] for t in stream]
    assert min(accs) > 0.85

def _ntk_by_definition(model, x, task=None, **kw):
    "The trace NTK from one autograd call per sample and output (slow, obviously right)"
    mult, names = lr_mults(model), [n for n, p in model.named_parameters() if p.requires_grad]
    ps = [p for n, p in model.named_parameters() if p.requires_grad]
    out = lambda i: (model(x[i:i + 1], task if not isinstance(task, torch.Tensor) else task[i:i + 1], **kw)
                     if isinstance(model, ScaledModelT) else model(x[i:i + 1]))
    n_out = out(0).shape[-1]
    K = torch.zeros(len(x), len(x), dtype=torch.float64)
    for k in range(n_out):
        J = torch.stack([torch.cat([(math.sqrt(mult[n]) * g).flatten().double() for n, g in
                                    zip(names, torch.autograd.grad(out(i)[0, k], ps, allow_unused=False))]) for i in range(len(x))])
        K += J @ J.T
    return K

from cl_scale.param import ScaledModel as ScaledModelT, ResNet

def test_ntk_plain_linear_with_biases():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    torch.testing.assert_close(empirical_ntk(m, x), _ntk_by_definition(m, x), rtol=1e-10, atol=1e-12)

def test_ntk_resnet_and_per_sample_heads():
    torch.manual_seed(0)
    r = ResNet(1, 3, width=4, depth=2, n_stages=2, param=Parameterization('mup', gamma0=0.7, readout='centered'), n_heads=2, dtype=torch.float64)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    heads = torch.tensor([0, 1, 1, 0])
    torch.testing.assert_close(empirical_ntk(r, x, heads), _ntk_by_definition(r, x, heads, centered=False), rtol=1e-9, atol=1e-12)
    mlp = MLP(10, 12, 2, 3, Parameterization('ntp', readout='centered'), n_heads=2, dtype=torch.float64)
    x = torch.randn(5, 10, dtype=torch.float64)
    heads = torch.tensor([1, 0, 1, 1, 0])
    torch.testing.assert_close(empirical_ntk(mlp, x, heads), _ntk_by_definition(mlp, x, heads, centered=False), rtol=1e-10, atol=1e-12)
