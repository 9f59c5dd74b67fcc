"""Bad or edge-case input ends in a clear error at the boundary (issue 20): each case asserts the error type and that the
message names the offending value or what is expected. The sweep faults of the same issue are checked here too."""
import math
from dataclasses import replace
import pytest
import torch
from cl_scale.param import MLP, Parameterization
from cl_scale.data import make_stream, TaskStream
from cl_scale.continual import train_continual, TrainConfig
from cl_scale.sweep import RunSpec, Sweep, ResultStore, run_sweep, pick_executor
from cl_scale.models import ViT
from cl_scale.fusion import fuse, vanilla_average
from cl_scale.cli import ReproConfig

@pytest.mark.parametrize('kw, says', [
    (dict(width=0), 'width must be an integer >= 1, got 0'), (dict(width=2.7), 'got 2.7'), (dict(width='64'), "got '64'"),
    (dict(depth=0), 'depth must be an integer >= 1'), (dict(depth=True), 'got True'), (dict(seed=-1), 'seed must be an integer >= 0'),
    (dict(param='ntp', gamma0=-1), 'gamma0 must be a positive finite number, got -1'), (dict(gamma0=math.nan), 'got nan'),
    (dict(gamma0=0), 'got 0'), (dict(param='mup2'), "unknown param 'mup2'"), (dict(similarity=1.5), 'similarity must lie in [0, 1]'),
    (dict(stream=dict(nope=1)), "['nope']"), (dict(train=dict(seed=3)), "['seed']"), (dict(train=dict(lr=-1)), 'lr must be positive'),
    # stream settings are checked when the spec is built, before any data is loaded (they used to fail in a worker)
    (dict(stream=dict(kind='shuffled')), "unknown stream kind 'shuffled'"), (dict(stream=dict(n_tasks=0)), 'n_tasks must be an integer >= 1, got 0'),
    (dict(stream=dict(p=1.5)), 'p must lie in [0, 1]'), (dict(stream=dict(test_frac=1.0)), 'test_frac must lie in (0, 1), got 1.0'),
    (dict(stream=dict(n_train=0)), 'n_train must be None or an integer >= 1, got 0'),
])
def test_runspec_is_checked_when_built(kw, says):
    with pytest.raises(ValueError, match=None) as e: RunSpec(**kw)
    assert says in str(e.value), str(e.value)

@pytest.mark.parametrize('w', [0, -1, 2.5, True])
def test_workers_must_be_a_positive_integer(w):
    for f in (lambda: pick_executor(None, w), lambda: ReproConfig.make(workers=w)):
        with pytest.raises(ValueError) as e: f()
        assert 'workers must be an integer >= 1' in str(e.value) and repr(w) in str(e.value)

def test_store_on_a_directory_a_non_database_and_an_impossible_path(tmp_path):
    with pytest.raises(ValueError, match='is a directory') as e: ResultStore(tmp_path)
    assert str(tmp_path) in str(e.value)
    junk = tmp_path/'junk.db'; junk.write_text('not a database ' * 100)
    with pytest.raises(ValueError, match='not a readable results database') as e: ResultStore(junk)
    assert str(junk) in str(e.value)
    (tmp_path/'file').write_text('x')
    with pytest.raises(ValueError, match='cannot create or open') as e: ResultStore(tmp_path/'file'/'x.db')
    assert 'x.db' in str(e.value)

_ST = make_stream(kind='permuted', p=0.5, n_tasks=2, n_train=60, n_test=30)
_T0 = _ST.tasks[0]
@pytest.mark.parametrize('change, says', [
    (dict(x_train=_T0.x_train[:0], y_train=_T0.y_train[:0]), 'has no train examples'),
    (dict(x_test=_T0.x_test[:0], y_test=_T0.y_test[:0]), 'has no test examples'),
    (dict(y_train=_T0.y_train[:10]), '60 train inputs but 10 labels'),
    (dict(y_train=_T0.y_train.float()), 'dtype torch.float32'),
    (dict(y_train=_T0.y_train.view(-1, 1)), 'shape (60, 1)'),
    (dict(y_train=_T0.y_train + 10), 'must lie in [0, 10)'),
    (dict(y_test=_T0.y_test - 20), 'must lie in [0, 10)'),
    (dict(x_train=_T0.x_train.clone().index_fill_(0, torch.tensor([3]), math.nan)), 'non-finite train inputs'),
    (dict(x_train=_T0.x_train.flatten(1)[:, :10], x_test=_T0.x_test.flatten(1)[:, :10]), 'have 10 features'),
])
def test_a_task_the_loop_cannot_learn_is_named(change, says):
    s = TaskStream([replace(_T0, **change)], _ST.config, _ST.in_shape, _ST.n_heads, _ST.d_out)
    with pytest.raises(ValueError) as e:
        train_continual(MLP(_ST.d_in, 16, 1, _ST.d_out, Parameterization()), s, TrainConfig(epochs=1, n_probe=0), progress=False)
    assert says in str(e.value) and "task 0 ('permuted-0')" in str(e.value), str(e.value)

def _vits(): return ViT(d=16, depth=2, heads=2, mlp=24), ViT(d=16, depth=3, heads=2, mlp=24)

@pytest.mark.parametrize('order', [(0, 1), (1, 0)])
def test_averaging_models_of_different_depths_is_refused(order):
    ms = [_vits()[i] for i in order]
    with pytest.raises(ValueError, match='different parameters') as e: vanilla_average(ms)
    assert 'blocks.2.' in str(e.value)
    with pytest.raises(ValueError, match='depth'): fuse(ms, cost='wts')

def test_fusion_with_empty_calibration_data():
    a, b = ViT(d=16, depth=1, heads=2, mlp=24), ViT(d=16, depth=1, heads=2, mlp=24)
    with pytest.raises(ValueError, match=r'calibration data is empty \(0 samples\)'): fuse([a, b], calib_data=torch.zeros(0, 1, 28, 28))

_TINY = RunSpec(width=16, depth=1, stream=dict(n_tasks=2, n_train=100, n_test=50), train=dict(epochs=1, n_probe=0))

def test_a_sweep_mixing_sp_with_mup_and_ntp_trains_every_run(tmp_path):
    "SP's random readout used to be batched with μP's zero one under batch='auto', and every run failed"
    sw = Sweep('mix', dict(param=['sp', 'mup', 'ntp'], seed=[0, 1]), _TINY)
    df = run_sweep(sw, ResultStore(tmp_path/'s.db'), executor='serial', progress=False)
    assert len(df) == 6 and set(df.status) == {'done'} and set(df.param) == {'sp', 'mup', 'ntp'}

def test_an_all_failed_sweep_still_has_its_columns(tmp_path):
    sw = Sweep('bad', dict(seed=[0, 1]), replace(_TINY, stream=dict(_TINY.stream, dataset='no-such-data')))
    df = run_sweep(sw, ResultStore(tmp_path/'s.db'), executor='serial', progress=False)
    assert len(df) == 0 and {'run_id', 'width', 'gamma0', 'seed', 'AA', 'CFr', 'diverged', 'acc'} <= set(df.columns)

def _cli(capsys, **kw):
    from cl_scale.cli import reproduce
    rc = reproduce(**kw)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err

def test_cli_resume_of_a_corrupt_or_missing_folder_is_one_line(tmp_path, capsys):
    (tmp_path/'config.json').write_text('{not json')
    rc, err = _cli(capsys, resume=str(tmp_path))
    assert rc == 2 and len(err) == 1 and str(tmp_path/'config.json') in err[0] and 'not a readable configuration' in err[0]
    rc, err = _cli(capsys, resume=str(tmp_path/'nope'))
    assert rc == 2 and len(err) == 1 and 'nope' in err[0]

def test_cli_resume_with_a_corrupt_store_names_it(tmp_path, capsys):
    from cl_scale.cli import ReproConfig
    import json
    from dataclasses import asdict
    (tmp_path/'config.json').write_text(json.dumps(asdict(ReproConfig.make(workers=1))))
    (tmp_path/'results.db').write_text('garbage ' * 50)
    rc, err = _cli(capsys, resume=str(tmp_path), only='coord_check')
    assert rc == 2 and len(err) == 1 and str(tmp_path/'results.db') in err[0] and 'move it away' in err[0]

@pytest.mark.parametrize('w', [0, -1])
def test_cli_workers_below_one(w, tmp_path, capsys):
    rc, err = _cli(capsys, workers=w, out=str(tmp_path), only='coord_check')
    assert rc == 2 and len(err) == 1 and f'got {w}' in err[0]
    assert not any(tmp_path.iterdir())                       # nothing started

@pytest.mark.parametrize('axes, says', [
    (dict(widht=[64]), "unknown sweep axes ['widht']"), (dict(width=[]), "axis 'width' must be a non-empty list of values, got []"),
    (dict(width=64), "axis 'width' must be a non-empty list of values, got 64"),
])
def test_a_sweep_with_a_bad_axis_is_refused_when_built(axes, says):
    with pytest.raises(ValueError) as e: Sweep('x', axes, _TINY).runs()
    assert says in str(e.value), str(e.value)

@pytest.mark.parametrize('batch', [0, 2.5])
def test_run_sweep_batch_must_be_auto_or_positive(batch, tmp_path):
    with pytest.raises(ValueError) as e: run_sweep(Sweep('b', dict(seed=[0]), _TINY), ResultStore(tmp_path/'s.db'), batch=batch)
    assert f"got {batch!r}" in str(e.value) and "'auto'" in str(e.value)

def test_fit_refuses_a_bad_schedule_and_bad_rates():
    from cl_scale.param import fit
    m = MLP(4, 8, 1, 2, Parameterization())
    loss = lambda f, idx, g: f(torch.zeros(len(idx), 4)).pow(2).mean()
    with pytest.raises(ValueError, match=r'need epochs >= 0, bs >= 1 and n >= 1, got 1, 0, 10'): fit(m, 10, loss, epochs=1, lr=0.1, bs=0)
    with pytest.raises(ValueError, match=r'lr must be positive, got -0.1'): fit([m, MLP(4, 8, 1, 2, Parameterization())], 10, loss, epochs=1, lr=-0.1)

def test_summarize_names_a_missing_column():
    import pandas as pd
    from cl_scale.sweep import summarize
    with pytest.raises(KeyError, match="no column 'AAA'") as e: summarize(pd.DataFrame(dict(gamma0=[1.0], AA=[0.5])), ['gamma0'], 'AAA')
    assert "'AA'" in str(e.value)                  # and which columns there are
