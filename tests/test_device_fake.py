"""A CPU-runnable check that nothing is made on the wrong device (issue 22): the package's models and fusion's layer
recording run on a *fake* CUDA device (`cl_scale.device.fake_device`: torch's FakeTensorMode, which propagates shapes,
dtypes and devices without computing, and accepts 'cuda' on a CPU-only torch). A tensor made inside them without
`device=` meets the fake CUDA tensors there and raises `FakeTensorDeviceMismatchError` ('found at least two devices'),
as it would on a real GPU. The last test shows that the check can fail.

What it cannot check: anything that reads values (`.item()`, `bool(tensor)`, a boolean mask's size) fails under the
mode, so a BERT's padding mask (`t[keep]` in `_rows`) is left out of its recording (every position kept, the mask itself
checked to be made on the device); the costs and the OT solvers read values (finiteness checks, convergence tests) and
are checked here only in their value-free parts, and on real devices by `tests/test_device.py`. Training needs
autograd, which the fake CUDA device lacks on a CPU-only torch."""
import dataclasses
import pytest
import torch
from cl_scale.device import fake_device, to_fake
from cl_scale.models import ViT, BERT
from cl_scale.param import MLP, ResNet
import cl_scale.fusion as F
import cl_scale.ot as O

def on_cuda(x) -> bool: return x.device.type == 'cuda'

@pytest.mark.parametrize('name', ['mlp', 'resnet', 'vit', 'bert'])
def test_models_forward_on_a_fake_gpu(name):
    "Each model, built on the CPU and moved to the fake GPU, computes its forward pass there"
    with fake_device('cuda') as dev:
        if name == 'mlp':                                                  # several heads: a task selects one
            m, x, kw = MLP(12, 16, 3, 4, n_heads=3), torch.empty(5, 12, device=dev), dict(task=2)
        elif name == 'resnet':
            m, x, kw = ResNet(3, 10, width=8, depth=3), torch.empty(2, 3, 16, 16, device=dev), {}
        elif name == 'vit':
            m, x, kw = ViT(d=16, depth=2, heads=2, mlp=32), torch.empty(4, 1, 8, 8, device=dev), {}
        else:
            m, x, kw = BERT(vocab_size=30, max_len=8, d=16, depth=2, heads=2, mlp=32), torch.zeros(4, 8, dtype=torch.long, device=dev), {}
        out = to_fake(m, dev)(x, **kw)
        assert on_cuda(out), out.device
        assert all(on_cuda(p) for p in m.parameters())

def _recorded(model_fn, x_fn, graph_fn=lambda m: F.graph_for(m), **kw) -> tuple:
    "(shapes, devices) of fusion's layer recording on the fake GPU, and the shapes of the same recording on the CPU"
    torch.manual_seed(0)
    cpu = {k: tuple(v.shape) for k, v in F.collect_activations(model_fn(), x_fn('cpu'), graph_fn(model_fn()), **kw).items()}
    with fake_device('cuda') as dev:
        m = to_fake(model_fn(), dev)
        acts = F.collect_activations(m, x_fn(dev), graph_fn(m), **kw)
        fake = {k: (tuple(v.shape), v.device.type) for k, v in acts.items()}
    return fake, cpu

@pytest.mark.parametrize('opts', [dict(), dict(via_inputs=False), dict(max_points=40), dict(tokens='window2+cls_last')])
def test_vit_layer_recording_on_a_fake_gpu(opts):
    "Everything fusion records of a ViT (outputs, shared inputs, token rules, subsampled points) is made on the GPU, in the CPU's shapes"
    opts = dict(opts); tokens = opts.pop('tokens', 'all')
    fake, cpu = _recorded(lambda: ViT(d=16, depth=2, heads=2, mlp=48), lambda dev: torch.randn(6, 1, 8, 8) if dev == 'cpu' else torch.empty(6, 1, 8, 8, device=dev),
                          lambda m: F.token_rules(F.graph_for(m), tokens), **opts)
    assert fake and all(d == 'cuda' for _, d in fake.values()), fake
    assert {k: s for k, (s, _) in fake.items()} == cpu

def test_bert_layer_recording_on_a_fake_gpu(monkeypatch):
    """A BERT's recording with every position kept (the padding mask selects rows by value, which the fake mode cannot
    do), and the padding mask itself, made on the GPU"""
    arch = F.ARCHS[BERT]
    with fake_device('cuda') as dev:
        m, ids = to_fake(BERT(vocab_size=30, max_len=8, d=16, depth=2, heads=2, mlp=32), dev), torch.zeros(4, 8, dtype=torch.long, device=dev)
        assert on_cuda(arch.keep(m, ids))
        monkeypatch.setitem(F.ARCHS, BERT, dataclasses.replace(arch, keep=None))
        acts = F.collect_activations(m, ids, F.graph_for(m))
    assert acts and all(on_cuda(v) for v in acts.values())
    assert acts['emb_norm'].shape == (16, 4 * 8) and acts['blocks.1.fc1'].shape == (32, 4 * 8)     # every position of every sequence

def test_value_free_parts_of_costs_and_weight_updates_on_a_fake_gpu():
    "The long products of the costs, the distances from Gram matrices, the row and column maps and the weight updates stay on the GPU"
    with fake_device('cuda') as dev:
        y = torch.empty(600, 24, device=dev)
        c = O._centred(y, torch.float32)
        assert on_cuda(c) and on_cuda(O._gram(c)) and on_cuda(O._sq_cols(c))
        assert on_cuda(O._from_gram(torch.empty(24, dtype=torch.float64, device=dev), torch.empty(20, dtype=torch.float64, device=dev),
                                    torch.empty(24, 20, dtype=torch.float64, device=dev)))
        P = torch.empty(24, 20, dtype=torch.float64, device=dev)
        R, C = O.row_map(P), O.col_map(P)
        W = torch.empty(8, 24, dtype=torch.float64, device=dev)
        assert on_cuda(R) and on_cuda(C) and on_cuda(F._align_in(W, R)) and on_cuda(F._align_out(W.T, C))   # small maps: products
        assert on_cuda(O.identity_map(6, device=dev).P)

class _WrongToy(torch.nn.Module):
    "A module that makes a tensor on the CPU in its forward pass (torch.arange without device=): the mistake the check is for"
    def __init__(self): super().__init__(); self.lin = torch.nn.Linear(4, 4)
    def forward(self, x): return self.lin(x) + torch.arange(4)

def test_the_check_catches_a_tensor_made_on_the_wrong_device():
    with fake_device('cuda') as dev:
        toy = to_fake(_WrongToy(), dev)
        with pytest.raises(Exception, match='found at least two devices'): toy(torch.empty(3, 4, device=dev))
    assert _WrongToy()(torch.zeros(3, 4)).shape == (3, 4)                # on the CPU alone the mistake is invisible
