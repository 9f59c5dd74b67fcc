"""The DMFT experiments' contract with the CLI: each `run_<name>` writes the tables and figures it names, and each
`<name>_claims` is a function of those saved tables alone — edit a table on disk and the verdict follows it."""
import json
import numpy as np
import pandas as pd
import pytest
import torch
from cl_scale.claims import Claim, VERDICTS
from cl_scale.device import DeviceError, resolve_device
from cl_scale.dmft_experiments import (DMFTSuite, EXPERIMENTS, TITLES, SOLVER_SEED0, two_layer_claims, deep_claims,
                                       read_tables, TWO_LAYER_TABLES, DEEP_TABLES)

TINY = DMFTSuite.make(two_layer_P=8, two_layer_steps=10, two_layer_widths=(32, 128), two_layer_seeds=3, two_layer_S_ref=2000,
                      two_layer_n_ref=2, lazy_S=1000, lazy_n=2,
                      phase_gamma0s=(0.1, 0.5, 1.0, 2.0), phase_eps=(0.25, 0.95), phase_seeds=2, phase_P=8, phase_D=20,
                      phase_steps=20, phase_S=400,
                      deep_gamma0s=(0.3, 1.5), deep_widths=(32, 64), deep_seeds=2, deep_P=3, deep_steps=4, deep_S=200)

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    out = {}
    for name, (run, _) in EXPERIMENTS.items():
        d = tmp_path_factory.mktemp(name)
        out[name] = (d, run(TINY, d, progress=False))
    return out

@pytest.mark.parametrize('name', list(EXPERIMENTS))
def test_run_writes_what_it_names_and_claims_read_it(runs, name):
    d, res = runs[name]
    assert set(res) == {'figures', 'tables', 'notes'} and res['notes'] and TITLES[name]
    for f in res['figures'] + res['tables']: assert (d/f).stat().st_size > 0, f
    assert DMFTSuite(**json.loads((d/'dmft_suite.json').read_text())) == TINY        # the configuration, beside the result
    claims = EXPERIMENTS[name][1](d)
    assert claims and all(isinstance(c, Claim) and c.verdict in VERDICTS and c.criterion for c in claims)
    assert [c.to_dict() for c in EXPERIMENTS[name][1](d)] == [c.to_dict() for c in claims]   # deterministic

def test_networks_and_solvers_never_share_seeds(runs):
    for name, tab in (('two_layer', 'dmft_two_layer_runs'), ('deep', 'dmft_deep_runs')):
        r = pd.read_csv(runs[name][0]/f'{tab}.csv')
        assert r[r.kind == 'network'].seed.max() < SOLVER_SEED0 <= r[r.kind == 'dmft'].seed.min()

def test_two_layer_verdict_follows_the_saved_reference(runs, tmp_path):
    "Shift the saved solver curves far away: claim (a) must disagree, computed from the edited CSV alone"
    d = runs['two_layer'][0]
    t = read_tables(d, TWO_LAYER_TABLES)
    c = t['dmft_two_layer_curves']
    g0 = c[c.kind == 'network'].gamma0.iloc[0]
    ref = (c.kind == 'dmft') & np.isclose(c.gamma0, g0)
    c.loc[ref, ['loss1', 'loss2']] += 0.2
    for k, v in t.items(): v.to_csv(tmp_path/f'{k}.csv', index=False)
    assert two_layer_claims(tmp_path)[0].verdict == 'disagrees'

def test_deep_verdict_follows_the_saved_forgetting(runs, tmp_path):
    "Make the saved networks forget far more than the DMFT: the forgetting claim must disagree"
    t = read_tables(runs['deep'][0], DEEP_TABLES)
    r = t['dmft_deep_runs']
    r.loc[r.kind == 'network', 'forgetting'] += 1.0
    for k, v in t.items(): v.to_csv(tmp_path/f'{k}.csv', index=False)
    assert deep_claims(tmp_path, n_boot=200)[0].verdict == 'disagrees'

def _no_seconds(df): return df.drop(columns=[c for c in df.columns if c == 'seconds'])

@pytest.mark.parametrize('name', list(EXPERIMENTS))
def test_grids_run_through_the_run_layer_serial_equals_pool_and_resume(runs, name, tmp_path):
    "The cells of a grid go through run_jobs into the run folder's store: the same tables on a pool and here, and a rerun recomputes nothing"
    from cl_scale.sweep import run_store
    d, res = runs[name]
    EXPERIMENTS[name][0](TINY, tmp_path, progress=False, executor='serial')
    for t in res['tables']:
        pd.testing.assert_frame_equal(_no_seconds(pd.read_csv(d/t)), _no_seconds(pd.read_csv(tmp_path/t)))
    store = run_store(tmp_path)
    before = dict(store._rows('SELECT run_id, finished FROM runs'))
    assert before and all(k.startswith(f'dmft_{name}:') for k in before)
    assert {r['device'] for r in store.results(f'dmft_{name}').values()} == {str(resolve_device('auto'))}   # where each cell ran
    EXPERIMENTS[name][0](TINY, tmp_path, progress=False, executor='serial', device='cpu')
    assert dict(store._rows('SELECT run_id, finished FROM runs')) == before                  # resumed (on any device): nothing recomputed
    for t in res['tables']:
        pd.testing.assert_frame_equal(_no_seconds(pd.read_csv(d/t)), _no_seconds(pd.read_csv(tmp_path/t)))

@pytest.mark.skipif(torch.cuda.is_available(), reason='a CUDA device is here')
@pytest.mark.parametrize('name', list(EXPERIMENTS))
def test_a_device_that_is_not_here_fails_before_any_cell(name, tmp_path):
    with pytest.raises(DeviceError, match="device 'cuda' was asked for.*available here: cpu"):
        EXPERIMENTS[name][0](TINY, tmp_path/'out', progress=False, device='cuda')
    assert not (tmp_path/'out').exists()
