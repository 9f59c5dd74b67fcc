"""Sweeps on real executors (a process pool and a Dask `LocalCluster`), resuming after a killed sweep, and retrying
failed runs. The notebook `03_sweep` tests the pieces in one process; these tests start other processes."""
import os, signal, subprocess, sys, textwrap, time
import numpy as np
import pytest
from cl_scale.sweep import RunSpec, Sweep, ResultStore, run_sweep, run_group

TINY = RunSpec(width=32, depth=2, stream=dict(n_tasks=2, n_train=300, n_test=150), train=dict(epochs=1, n_probe=32, n_ntk=0))
SWEEP = Sweep('t', dict(gamma0=[0.1, 1.0], seed=[0, 1]), TINY)

def _by_id(df): return df.set_index('run_id').sort_index()

@pytest.fixture(scope='module')
def serial(tmp_path_factory):
    return _by_id(run_sweep(SWEEP, ResultStore(tmp_path_factory.mktemp('s') / 'db.sqlite'), executor='serial', progress=False))

def test_process_pool_matches_serial(serial, tmp_path):
    df = _by_id(run_sweep(SWEEP, ResultStore(tmp_path / 'db.sqlite'), executor='pool', workers=2, batch=2, progress=True))
    assert list(df.index) == list(serial.index)
    # one PyTorch thread per worker vs the test process's threads: float32 sums may round differently
    np.testing.assert_allclose(df.AA.values, serial.AA.values, atol=1e-2)

def test_dask_local_cluster(serial, tmp_path):
    distributed = pytest.importorskip('distributed')
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
         distributed.Client(lc) as client:
        df = _by_id(run_sweep(SWEEP, ResultStore(tmp_path / 'db.sqlite'), executor=client, batch=1))
    assert list(df.index) == list(serial.index) and (df.status == 'done').all()
    np.testing.assert_allclose(df.AA.values, serial.AA.values, atol=1e-2)

def _sweep_process(tmp_path, sweep, db, how:str, **popen):
    "Run `sweep` (one seed axis) on the store `db` in another Python process, as a script; `how`: run_sweep's executor arguments"
    spec, seeds = sweep.base, sweep.axes['seed']
    (tmp_path / 'sweep.py').write_text(textwrap.dedent(f"""
        from cl_scale.sweep import *
        if __name__ == '__main__':
            spec = RunSpec.from_dict({spec.to_dict()!r})
            run_sweep(Sweep({sweep.name!r}, dict(seed={list(seeds)!r}), spec), ResultStore({str(db)!r}), {how}, batch=1, progress=False)
    """))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.Popen([sys.executable, str(tmp_path / 'sweep.py')], cwd=root, **popen)

def test_killed_sweep_resumes(tmp_path):
    "Kill a sweep (SIGKILL, no clean-up) once some runs are committed; the rerun keeps them and adds the rest"
    db = tmp_path / 'db.sqlite'
    spec = RunSpec(width=128, depth=2, stream=dict(n_tasks=3), train=dict(epochs=2, n_probe=0, n_ntk=0))
    sweep = Sweep('kill', dict(seed=list(range(20))), spec)
    p = _sweep_process(tmp_path, sweep, db, "executor='serial'")
    t0 = time.time()
    while time.time() - t0 < 120:
        if db.exists() and len(ResultStore(db).done()) >= 2: break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait()
    store = ResultStore(db)
    kept = dict(store._rows("SELECT run_id, finished FROM runs WHERE status='done'"))
    assert 2 <= len(kept) < 20, f"the kill came too late or too early: {len(kept)} runs committed"
    t0 = time.time()
    df = run_sweep(sweep, store, executor='serial', batch=1, progress=False)
    assert len(df) == 20 and set(df.seed) == set(range(20))
    assert time.time() - t0 < 60 and not store.running(stale=1e9)   # the killed process's claim is taken over at once (its pid is gone)
    after = dict(store._rows('SELECT run_id, finished FROM runs'))
    assert all(after[k] == v for k, v in kept.items())     # committed runs were not re-trained

def test_failed_runs_are_stored_and_retried(tmp_path):
    store = ResultStore(tmp_path / 'db.sqlite')
    bad = Sweep('bad', dict(seed=[0]), RunSpec(width=32, stream=dict(dataset='no-such-data')))
    df = run_sweep(bad, store, executor='serial', progress=False)
    assert len(df) == 0
    failed = store.df('bad', status='failed')
    assert len(failed) == 1 and 'no-such-data' in failed.error.iloc[0]
    assert store.done('bad') == set()

def test_run_group_rejects_mixed_groups():
    with pytest.raises(ValueError, match='group keys'):
        run_group([TINY, RunSpec(width=64)])

from hypothesis import given, settings, strategies as st
from cl_scale.sweep import _jobs, _cost

@settings(max_examples=60, deadline=None)
@given(widths=st.lists(st.sampled_from([16, 64, 256, 1024]), min_size=1, max_size=4),
       n_seeds=st.integers(1, 7), batch=st.one_of(st.integers(1, 9), st.just("auto")), workers=st.integers(1, 4))
def test_jobs_partition_the_runs(widths, n_seeds, batch, workers):
    "Every run lands in exactly one job; a job never mixes groups nor exceeds `batch`; costliest jobs come first"
    runs = Sweep('h', dict(width=sorted(set(widths)), seed=list(range(n_seeds))), RunSpec()).runs()
    jobs = _jobs(runs, batch, workers)
    ids = [r.run_id for j in jobs for r in j]
    assert sorted(ids) == sorted(r.run_id for r in runs)
    assert all(0 < len(j) <= (16 if batch == "auto" else batch) and len({r.group_key() for r in j}) == 1 for j in jobs)
    costs = [_cost(j) for j in jobs]
    assert costs == sorted(costs, reverse=True)

_CONCURRENT = """
import sys, torch
torch.set_num_threads(1)
import cl_scale.sweep as sw
n = [0]; real = sw.run_group
def counting(specs, *a, **k): n[0] += len(specs); return real(specs, *a, **k)
sw.run_group = counting                         # serial executor: the runs are trained in this process
base = sw.RunSpec(width=128, depth=2, stream=dict(n_tasks=2, n_train=400, n_test=100), train=dict(epochs=3, n_probe=0))
sweep = sw.Sweep('c', dict(seed=range(8), gamma0=[0.1, 1.0]), base)
df = sw.run_sweep(sweep, sw.ResultStore(sys.argv[1]), executor='serial', batch=1, progress=False)
print(n[0], len(df))
"""

def test_two_processes_split_one_sweep(tmp_path):
    "Runs are claimed in the store: two processes on one sweep train every run once between them, and both return all of it"
    import subprocess, sys
    db = str(tmp_path/'shared.db')
    ps = [subprocess.Popen([sys.executable, '-c', _CONCURRENT, db], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].split() for p in ps]
    assert all(p.returncode == 0 for p in ps)
    trained, returned = [int(o[0]) for o in outs], [int(o[1]) for o in outs]
    assert sum(trained) == 16 and min(trained) > 0, trained          # split, none trained twice
    assert returned == [16, 16]
    store = ResultStore(db)
    assert len(store.done()) == 16 and not store.running(stale=1e9)  # every claim replaced by its record

def test_a_dead_owners_claim_is_taken_over(tmp_path):
    store = ResultStore(tmp_path/'s.db')
    sweep = Sweep('d', dict(seed=[0, 1]), RunSpec(width=16, depth=1, stream=dict(n_tasks=2, n_train=100, n_test=50),
                                                  train=dict(epochs=1, n_probe=0)))
    runs = sweep.runs()
    assert store.claim(runs[:1], 'd', 'ghost:1:dead', stale=60) == [runs[0].run_id]
    assert store.claim(runs[:1], 'd', 'other:2:alive', stale=60) == []                  # a live claim is respected
    t0 = time.time()
    df = run_sweep(sweep, store, executor='serial', progress=False, stale=1.0)   # the ghost never beats: taken over after 1 s
    assert len(df) == 2 and time.time() - t0 >= 1.0 and not store.running(stale=1e9)

def _session(sid:int) -> list:
    "Pids of the processes in session `sid` (the killed sweep, its forkserver, resource tracker and pool workers)"
    out = []
    for d in os.listdir('/proc'):
        if not d.isdigit(): continue
        try: stat = open(f'/proc/{d}/stat').read()
        except OSError: continue
        fields = stat[stat.rindex(')') + 2:].split()       # after "pid (comm) ": state, ppid, pgrp, session, ...
        if int(fields[3]) == sid and fields[0] != 'Z': out.append(int(d))
    return out

@pytest.mark.skipif(not os.path.isdir('/proc'), reason='reads the process table from /proc')
def test_killed_pool_sweep_leaves_nothing_and_resumes(tmp_path):
    "SIGKILL a sweep on the process pool while its workers train: the forkserver, its resource tracker and the workers exit; the rerun keeps what was committed, trains the rest once, and equals an uninterrupted sweep"
    db = tmp_path / 'killed.db'
    spec = RunSpec(width=256, depth=3, stream=dict(n_tasks=3), train=dict(epochs=3, n_probe=0, n_ntk=0))
    sweep = Sweep('poolkill', dict(seed=list(range(16))), spec)
    p = _sweep_process(tmp_path, sweep, db, "executor='pool', workers=2", start_new_session=True)
    t0, warm_at = time.time(), None
    while time.time() - t0 < 300 and p.poll() is None:
        n = len(ResultStore(db).done()) if db.exists() else 0
        if warm_at is None and len(_session(p.pid)) >= 5: warm_at = n      # parent, tracker, forkserver and two workers
        if warm_at is not None and n >= warm_at + 2: break                 # the workers have committed runs too
        time.sleep(0.05)
    assert p.poll() is None, "the sweep ended before it could be killed"
    assert len(_session(p.pid)) >= 5, "the pool's workers were not running when the sweep was killed"
    p.send_signal(signal.SIGKILL); p.wait()
    t0 = time.time()
    while _session(p.pid) and time.time() - t0 < 30: time.sleep(0.1)
    assert _session(p.pid) == [], f"processes left behind by the killed sweep: {_session(p.pid)}"
    store = ResultStore(db)
    kept = dict(store._rows("SELECT run_id, finished FROM runs WHERE status='done'"))
    assert 2 <= len(kept) < 16, f"the kill came too late or too early: {len(kept)} runs committed"
    df = _by_id(run_sweep(sweep, store, executor='pool', workers=2, batch=1, progress=False))
    after = dict(store._rows("SELECT run_id, finished FROM runs"))
    assert len(after) == 16 and len(df) == 16 and not store.running(stale=1e9)    # none lost, none twice
    assert all(after[k] == v for k, v in kept.items())                             # committed runs were not re-trained
    ref = _by_id(run_sweep(sweep, ResultStore(tmp_path / 'whole.db'), executor='pool', workers=2, batch=1, progress=False))
    assert list(df.index) == list(ref.index)
    np.testing.assert_array_equal(df.AA.values, ref.AA.values)      # same threads per run in every process: the same numbers
    np.testing.assert_array_equal(df.FA.values, ref.FA.values)

def test_a_small_grid_runs_here_without_starting_the_pool(tmp_path):
    "The default executor starts the pool only when the jobs left would end sooner on it (`_worth_a_pool`): four tiny runs never do"
    from cl_scale.sweep import close_pools, _POOLS
    close_pools()
    df = run_sweep(SWEEP, ResultStore(tmp_path / 'db.sqlite'), workers=2, batch=1, progress=False)
    assert len(df) == 4 and not any(p.launched for p in _POOLS.values())
