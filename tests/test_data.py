"""Checks of `cl_scale.data` that do not belong in the notebook: the torchvision path (through a stand-in module,
and for real when torchvision and its files are present) and properties of the permuted streams."""
import sys, types
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from cl_scale.data import *

def _fake_torchvision(root_with_files):
    "A stand-in for `torchvision` whose datasets exist only under `root_with_files`, in torchvision's storage layout"
    rng = np.random.default_rng(0)
    def make(name, shape, channels_last):
        class DS:
            def __init__(self, root, train=True, download=False):
                assert download is False, "cl_scale must never ask torchvision to download"
                if root != root_with_files: raise RuntimeError("Dataset not found. You can use download=True to download it")
                n = 60 if train else 20
                self.data = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
                self.data = torch.as_tensor(self.data) if not channels_last else self.data
                self.targets = torch.as_tensor(np.arange(n) % 10) if not channels_last else list(np.arange(n) % 10)
        DS.__name__ = name
        return DS
    tv = types.ModuleType('torchvision')
    tv.datasets = types.SimpleNamespace(MNIST=make('MNIST', (28, 28), False), FashionMNIST=make('FashionMNIST', (28, 28), False),
                                        CIFAR10=make('CIFAR10', (32, 32, 3), True))
    return tv

def test_torchvision_adapter(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'torchvision', _fake_torchvision(str(tmp_path)))
    m = load_dataset('mnist', root=str(tmp_path))
    assert m.shape == (1, 28, 28) and (len(m.x_train), len(m.x_test)) == (60, 20) and m.n_classes == 10
    assert abs(m.x_train.mean().item()) < 1e-5 and abs(m.x_train.std().item() - 1) < 1e-2
    c = load_dataset('cifar10', root=str(tmp_path), n_train=30, n_test=10)
    assert c.shape == (3, 32, 32) and (len(c.x_train), len(c.x_test)) == (30, 10)
    assert torch.bincount(c.y_train).tolist() == [3] * 10
    monkeypatch.setenv('CL_SCALE_DATA', str(tmp_path))
    assert load_dataset('fashion_mnist').shape == (1, 28, 28)                    # root from $CL_SCALE_DATA
    s = make_stream(dataset='cifar10', kind='permuted', p=0.5, n_tasks=2, root=str(tmp_path))
    assert s.in_shape == (3, 32, 32) and s.d_out == 10
    with pytest.raises(FileNotFoundError, match='never downloads'):
        load_dataset('mnist', root=str(tmp_path / 'elsewhere'))

def test_torchvision_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'torchvision', None)                        # import torchvision → ImportError
    with pytest.raises(ImportError, match='needs torchvision'): load_dataset('mnist')

@pytest.mark.parametrize('name', ['mnist', 'fashion_mnist', 'cifar10'])
def test_real_torchvision_datasets(name):
    pytest.importorskip('torchvision')
    try: ds = load_dataset(name, n_train=500, n_test=100)
    except FileNotFoundError as e: pytest.skip(f"{name} is not on disk: {e}")
    assert len(ds.x_train) == 500 and ds.n_classes == 10

@settings(max_examples=30, deadline=None)
@given(p=st.floats(0, 1), side=st.integers(2, 12), seed=st.integers(0, 10_000))
def test_partial_permutation_properties(p, side, seed):
    perm = partial_permutation((1, side, side), p, np.random.default_rng(seed))
    n = side * side
    k = int(round(p * n))
    assert sorted(perm) == list(range(n))                                       # a permutation
    moved = set(np.flatnonzero(perm != np.arange(n)))
    assert moved <= set(pixel_order((1, side, side))[:k])                       # only the innermost k positions move
    # the innermost k positions are exactly those with the smallest distance to the centre
    c = (side - 1) / 2
    d = np.array([max(abs(i // side - c), abs(i % side - c)) for i in range(n)])
    inner = pixel_order((1, side, side))[:k]
    if 0 < k < n: assert d[inner].max() <= np.sort(d)[k]

def test_streams_rebuild_from_config():
    s = make_stream(kind='permuted', p=0.3, n_tasks=3, seed=4)
    again = make_stream(StreamConfig(**s.config.to_dict()))
    for a, b in zip(s, again): assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    other = make_stream(kind='permuted', p=0.3, n_tasks=3, seed=5)
    assert not torch.equal(s[1].x_train, other[1].x_train)
