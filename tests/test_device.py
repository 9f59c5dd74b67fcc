"""The device option: bad devices end in one line, and the same small cases on every accelerator present agree with the CPU.

The CPU-only tests run everywhere. The accelerator tests are parametrized over `available_devices()` minus the CPU and
skip cleanly on a machine without one (the CI has none); they were written to be run on a lent GPU machine
(`python -m pytest tests/test_device.py tests/test_device_fake.py`). Each compares with the CPU within a stated
tolerance, and says why that tolerance: the two devices start from the same weights and see the same batches (both are
made on the CPU, from the same seeds), so what differs is the rounding of the matrix products (cuBLAS and MKL sum in
different orders), amplified by training."""
import copy, math
from dataclasses import replace
import numpy as np
import pytest
import torch
from cl_scale.device import available_devices, resolve_device, DeviceError, device_option
from cl_scale.sweep import RunSpec, Sweep, ResultStore, run_sweep, run_group
from cl_scale.continual import TrainConfig, train_continual, evaluate
from cl_scale.param import MLP, Parameterization
from cl_scale.data import make_stream

ACCEL = [d for d in available_devices() if d != 'cpu']
on_accel = pytest.mark.parametrize('dev', ACCEL or [pytest.param('none', marks=pytest.mark.skip(reason='no accelerator on this machine'))])
NO_CUDA = not torch.cuda.is_available()

_TINY = RunSpec(width=32, depth=2, stream=dict(dataset='digits', kind='permuted', n_tasks=2, p=0.5, n_train=300, n_test=100),
                train=dict(epochs=1, n_probe=64, n_ntk=8, lr=10.0))

# --- a device this machine lacks, or a bad option: one clear line, before any work --------------------------------------

@pytest.mark.skipif(not NO_CUDA, reason='this machine has CUDA')
def test_cli_device_cuda_without_cuda_is_one_line(tmp_path, capsys):
    from cl_scale.cli import reproduce
    rc = reproduce(device='cuda', out=str(tmp_path), only='coord_check', quick=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "device 'cuda' was asked for" in err[0] and 'available here: cpu' in err[0], err[0]
    assert not any(tmp_path.iterdir())                         # nothing started

@pytest.mark.parametrize('kw, says', [(dict(device='xla'), "'xla' is not supported"), (dict(device='gpu'), "unknown device 'gpu'"),
                                      (dict(precision='fp16'), "unknown precision 'fp16'")])
def test_cli_bad_device_or_precision_is_one_line(kw, says, tmp_path, capsys):
    from cl_scale.cli import reproduce
    rc = reproduce(out=str(tmp_path), only='coord_check', quick=True, **kw)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and says in err[0], err
    assert not any(tmp_path.iterdir())

@pytest.mark.skipif(not NO_CUDA, reason='this machine has CUDA')
def test_run_sweep_on_a_missing_device_fails_before_any_run(tmp_path):
    store = ResultStore(tmp_path/'s.db')
    with pytest.raises(DeviceError) as e: run_sweep(Sweep('d', dict(seed=[0, 1]), _TINY), store, device='cuda:0', progress=False)
    assert "device 'cuda:0' was asked for" in str(e.value) and 'available here: cpu' in str(e.value)
    assert len(store) == 0

def test_a_remote_device_option_is_checked_but_not_resolved_here():
    # a Dask worker on a GPU machine resolves 'cuda' itself; this machine only checks the spelling
    assert device_option('cuda:3') == 'cuda:3'
    with pytest.raises(ValueError, match="unknown device 'cuda:x'"): device_option('cuda:x')

def test_models_on_two_devices_are_named_at_the_boundary():
    s = make_stream(kind='permuted', p=0.5, n_tasks=1, n_train=64, n_test=32)
    a = MLP(s.d_in, 16, 1, s.d_out, Parameterization('mup', 1.0)); b = copy.deepcopy(a).to('meta')
    with pytest.raises(ValueError, match='model 0 on cpu, model 1 on meta'): train_continual([a, b], s, progress=False)
    with pytest.raises(ValueError, match="evaluate: model on meta"): evaluate(b, s[0])

def test_the_device_and_precision_are_saved_beside_every_run(tmp_path):
    df = run_sweep(Sweep('d', dict(seed=[0]), _TINY), ResultStore(tmp_path/'s.db'), executor='serial', progress=False, device='cpu')
    assert df.device.tolist() == ['cpu'] and df.precision.tolist() == ['fp32']
    rec = ResultStore(tmp_path/'s.db').get(df.run_id[0])
    assert rec['result']['config']['dtype'] == 'float32' and rec['result']['config']['device_name'].startswith('cpu')

# --- the same small cases on every accelerator present -------------------------------------------------------------------

def _records(specs, device):
    recs = run_group([s.to_dict() for s in specs], device=device)
    assert all(r['status'] == 'done' for r in recs), [r['error'] for r in recs]
    return [r['result'] for r in recs]

@on_accel
def test_training_a_few_steps_matches_the_cpu(dev):
    # one run (the looped path): 2 tasks × ~3 steps. Accuracy may move by a test example or two where a logit is a near
    # tie (1/100 each), so |Δacc| <= 0.03; the recorded feature distances are smooth: within 1e-3 absolute
    spec = [replace(_TINY, gamma0=0.5)]
    cpu, acc = _records(spec, 'cpu')[0], _records(spec, dev)[0]
    np.testing.assert_allclose(np.array(acc['acc']), np.array(cpu['acc']), atol=0.03)
    np.testing.assert_allclose(np.array(acc['loss']), np.array(cpu['loss']), rtol=1e-3, atol=1e-4)
    assert acc['config']['device'].startswith(dev.split(':')[0]) and cpu['config']['device'] == 'cpu'
    for k in ('cka_init_t1', 'phi_init_t1', 'ntk_init_t1'):
        assert abs(acc['feature_metrics'][k] - cpu['feature_metrics'][k]) <= 1e-3, k

@on_accel
def test_a_batched_group_matches_the_cpu(dev):
    # four γ0 trained as one stacked model: the same tolerance as one run, for every member
    specs = [replace(_TINY, gamma0=g, seed=i) for i, g in enumerate((0.1, 0.3, 1.0, 3.0))]
    for c, a in zip(_records(specs, 'cpu'), _records(specs, dev)):
        np.testing.assert_allclose(np.array(a['acc']), np.array(c['acc']), atol=0.03)
        np.testing.assert_allclose(np.array(a['loss']), np.array(c['loss']), rtol=1e-3, atol=1e-4)

@on_accel
def test_reduced_precision_runs_and_stays_close(dev):
    # bfloat16 keeps 8 bits of mantissa: after a few steps the accuracies agree to a few test examples
    specs = [replace(_TINY, gamma0=1.0)]
    full = _records(specs, dev)[0]
    bf = _records([replace(specs[0], train={**_TINY.train, 'precision': 'bf16'})], dev)[0]
    assert np.isfinite(bf['acc']).all() and bf['config']['precision'] == 'bf16'
    np.testing.assert_allclose(np.array(bf['acc']), np.array(full['acc']), atol=0.08)

@on_accel
def test_a_model_on_the_device_and_data_on_the_cpu_are_named(dev):
    s = make_stream(kind='permuted', p=0.5, n_tasks=1, n_train=64, n_test=32)
    m = MLP(s.d_in, 16, 1, s.d_out, Parameterization('mup', 1.0)).to(resolve_device(dev))
    with pytest.raises(ValueError, match=f"evaluate: model on {resolve_device(dev)}"): evaluate(m, s[0])

# --- both DMFT solvers: the same noise (drawn on the CPU), so only the order of summation differs --------------------------
# Rounding-sized changes of the inputs moved the outputs by ~3e-14 (two-layer, deep with factor sources) and ~4e-12 (deep
# with Cholesky sources, which amplifies rounding near singular kernels) in float64, and by ~2e-7 in float32 (measured on
# the CPU when the device paths were written); the tolerances below leave >= 1000× headroom. The deep cases run a fixed
# number of iterations (tol=1e-12), so the count cannot depend on rounding.

def _dmft_cases():
    import warnings
    from cl_scale.dmft import similarity_problem, solve_two_layer, solve_deep, DMFTConvergenceWarning
    two, small = similarity_problem(0.5, 2, P=20, D=50, seed=1), similarity_problem(0.5, 2, P=4, D=20, seed=1)
    deep = dict(gamma0=1.0, depth=2, steps=20, S=300, tol=1e-12, max_iter=6, resp_every=4, resp_samples=150, smooth_step=True, jitter=1e-6)
    def quiet(f):
        def g(d):
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', DMFTConvergenceWarning); return f(d)
        return g
    return {
        'two-layer float64': (quiet(lambda d: solve_two_layer(two, gamma0=1.0, steps=100, S=4000, dtype=torch.float64, device=d)), 1e-9, 0),
        'two-layer float32': (quiet(lambda d: solve_two_layer(two, gamma0=1.0, steps=100, S=4000, dtype=torch.float32, device=d)), 1e-3, 1e-6),
        'deep, factor sources, coarse responses': (quiet(lambda d: solve_deep(small, device=d, **deep)), 1e-9, 0),
        'deep, Cholesky sources, exact responses': (quiet(lambda d: solve_deep(small, gamma0=1.0, depth=2, steps=4, S=400, tol=1e-12,
                                                                              max_iter=4, damping=0.3, device=d)), 1e-6, 0),
        'deep, float32 start then float64': (quiet(lambda d: solve_deep(small, device=d, **{**deep, 'float32_until': 3e-2, 'max_iter': 9})), 1e-4, 0),
    }

@on_accel
@pytest.mark.parametrize('case', list(_dmft_cases()))
def test_dmft_solvers_match_the_cpu(dev, case):
    solve, rtol, atol = _dmft_cases()[case]
    a, c = solve(dev), solve('cpu')
    np.testing.assert_allclose(a.loss, c.loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.kernels[-1]['K'], c.kernels[-1]['K'], rtol=rtol, atol=max(atol, 1e-12))
    if c.residuals is not None: np.testing.assert_allclose(a.residuals, c.residuals, rtol=max(rtol, 1e-6))
    assert a.config['device'].startswith(dev.split(':')[0]) and c.config['device'] == 'cpu'
    if 'float32_iterations' in c.config: assert a.config['float32_iterations'] == c.config['float32_iterations']

# --- a ViT fusion: float64 parents (no TF32 convolutions, no float32 products), so only the rounding order differs ---------
# EMD's plans are permutations that a 1e-15 change of the costs cannot flip short of a near-tie (which random float64 data
# makes very unlikely): equal plans, parameters within 1e-12. Sinkhorn at tol=1e-12 converges to float64 rounding
# (its plan was within 5e-13 of the tol=1e-14 plan on the CPU), scaled by the layer width in the maps: parameters 1e-9.

@on_accel
def test_a_vit_fusion_matches_the_cpu(dev):
    from cl_scale.models import ViT
    from cl_scale.fusion import fuse, align, model_output
    d = resolve_device(dev)
    torch.manual_seed(0)
    a, b = ViT(d=32, depth=2, heads=4, mlp=96).double(), ViT(d=32, depth=2, heads=4, mlp=96).double()
    x = torch.randn(64, 1, 8, 8, dtype=torch.float64)
    for opts, tol in ((dict(), 1e-12), (dict(solver='sinkhorn', reg=0.05, tol=1e-12), 1e-9)):
        ref, (_, mc) = fuse([a, b], anchor=1, calib_data=x, device='cpu', **opts), align(a, b, x, device='cpu', return_maps=True, **opts)
        tm = {}
        got = fuse([a, b], anchor=1, calib_data=x, device=dev, timings=tm, **opts)
        _, mg = align(a, b, x, device=dev, return_maps=True, **opts)
        assert next(got.parameters()).device == d and next(a.parameters()).device.type == 'cpu'
        assert 'to_device' in tm and ('emd_transfer' in tm) == (not opts)
        for k in mc:
            assert mg[k].P.device == d
            if not opts: assert torch.equal(mg[k].P.cpu(), mc[k].P), k
            else: torch.testing.assert_close(mg[k].P.cpu(), mc[k].P, rtol=0, atol=1e-11)
        for k, v in ref.state_dict().items(): torch.testing.assert_close(got.state_dict()[k].cpu(), v, rtol=0, atol=tol)
        torch.testing.assert_close(model_output(got, x.to(d)).cpu(), model_output(ref, x), rtol=0, atol=10 * tol)
