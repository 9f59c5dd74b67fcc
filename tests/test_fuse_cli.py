"""The installed console script `cl-scale-fuse` run as a user runs it (a subprocess): a ViT and a permuted copy of it,
saved with `save_pretrained`, fused with exact OT into a checkpoint that `from_pretrained` loads and that equals the
original; an error is one line on stderr with exit status 2 (a `--device` this machine lacks too, before any work);
`--help` lists every `FusionConfig` field. The notebook `32_fuse_cli` tests the library functions. Skipped when
`transformers` (the optional extra `cl_scale[hf]`) is absent."""
import json, os, subprocess, sys, tomllib
from dataclasses import fields
from pathlib import Path
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import ViTConfig, ViTForImageClassification
from cl_scale.fusion import FusionConfig, permuted_copy, model_output

ROOT = Path(__file__).resolve().parents[1]
transformers.logging.set_verbosity_error()

def test_declared_in_pyproject():
    scripts = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['scripts']
    assert scripts['cl-scale-fuse'] == 'cl_scale.fuse_cli:main'

@pytest.fixture(scope='module')
def script():
    exe = Path(sys.executable).parent/'cl-scale-fuse'
    if not exe.exists(): pytest.skip("the console script is not installed in this environment: run `pip install -e . --no-deps`")
    return str(exe)

def run(script, *args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}
    return subprocess.run([script, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)

@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    "A tiny ViT (built from a config) and a permuted copy of it, saved with save_pretrained"
    d = tmp_path_factory.mktemp('ckpts')
    torch.manual_seed(0)
    vit = ViTForImageClassification(ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, intermediate_size=48,
                                              num_hidden_layers=2, num_attention_heads=4, num_labels=10))
    vit.save_pretrained(d/'a'); permuted_copy(vit, seed=1).save_pretrained(d/'b')
    return vit, d/'a', d/'b'

def test_fuses_a_permuted_copy_back_to_the_original(script, checkpoints, tmp_path):
    vit, a, b = checkpoints
    r = run(script, a, b, '--calib', 'embedded:digits', '--n-calib', 30, '--solver', 'emd', '--out', tmp_path/'fused', '--device', 'cpu')
    assert r.returncode == 0, r.stderr
    assert 'fused 2 ViTForImageClassification checkpoints' in r.stdout and 'fusion.json' in r.stdout
    fused = ViTForImageClassification.from_pretrained(tmp_path/'fused')
    x = torch.randn(12, 1, 8, 8)
    assert (model_output(fused, x) - model_output(vit, x)).abs().max() < 1e-6
    for k, v in vit.state_dict().items(): assert (fused.state_dict()[k] - v).abs().max() < 1e-6, k
    rec = json.loads((tmp_path/'fused'/'fusion.json').read_text())
    assert rec['calibration']['source'] == 'embedded:digits' and rec['calibration']['count'] == 30
    assert rec['layers'] and all(r['permutation'] and r['top_mass'] == 1 for r in rec['layers'])
    assert set(rec['config']) == {f.name for f in fields(FusionConfig)}
    assert rec['config']['device'] == 'cpu' and rec['device']['device'] == 'cpu' and rec['device']['dtype'] == 'float32'

def test_an_error_is_one_line_with_status_2(script, checkpoints, tmp_path):
    _, a, _ = checkpoints
    r = run(script, a, tmp_path/'missing', '--out', tmp_path/'out')
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('cl-scale-fuse: error: ') and str(tmp_path/'missing') in lines[0]
    assert not (tmp_path/'out').exists()

def test_help_lists_every_fusion_option(script):
    r = run(script, '--help')
    assert r.returncode == 0
    for f in fields(FusionConfig): assert '--' + f.name.replace('_', '-') in r.stdout
    for opt in ('--calib', '--n-calib', '--anchor', '--weights', '--out', '--force', '--seed', '--debug', '--device'): assert opt in r.stdout

@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_a_missing_device_is_one_line_before_any_work(script, tmp_path):
    "--device cuda without a GPU: one line naming the device and what there is, status 2, before any checkpoint is read"
    r = run(script, tmp_path/'not_read_a', tmp_path/'not_read_b', '--out', tmp_path/'out', '--device', 'cuda')
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cl-scale-fuse: error: device 'cuda' was asked for"), lines
    assert 'available here: cpu' in lines[0] and 'not_read' not in lines[0]          # the checkpoints were never looked at
    assert not (tmp_path/'out').exists()
