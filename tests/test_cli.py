"""`cl-scale-reproduce` end to end on tiny settings: every part runs (plus a deliberately broken one), both reports
link every figure and table, the claims in the reports are the ones recomputed from the saved CSVs, a failed part is
reported without stopping the others, and resuming a finished run recomputes nothing (sweep runs and fusion models
included). The notebook `30_cli` tests the pieces one part at a time; these tests run them together."""
import json, html, re, shutil
from dataclasses import asdict
from pathlib import Path
import pandas as pd
import pytest
import torch
import cl_scale.cli as cli
import cl_scale.fusion_experiments as fx
import cl_scale.sweep as sweep
from cl_scale.cli import ReproConfig, run_reproduce, claims_for, load_part, reproduce

TINY = ReproConfig.make(
    widths=(32, 64), seeds=(0, 1), depth=2, steps=2,
    cl=dict(widths=(16,), similarity_widths=(16,), gamma0s=(0.1, 1.0), similarities=(0.0, 0.9), width_widths=(16, 32),
            seeds=(0, 1), n_tasks=2, steps=2, lrs=(3.0, 30.0), n_train=200, n_test=100, data_root='/nonexistent'),
    workers=1,
    dmft=dict(two_layer_widths=(32, 64), two_layer_seeds=2, two_layer_steps=8, two_layer_S_ref=400, two_layer_n_ref=2,
              lazy_S=400, lazy_n=2, phase_gamma0s=(0.1, 1.0), phase_eps=(0.25, 0.75), phase_seeds=2, phase_steps=8,
              phase_S=300, deep_gamma0s=(0.3, 1.0), deep_eps=(0.5,), deep_widths=(32, 64), deep_seeds=2, deep_solver_seeds=2,
              deep_P=3, deep_steps=3, deep_S=100),
    fusion=dict(dataset='digits', patch=2, pairs=1, width=8, wide=12, depth=1, heads=2, epochs=1, regs=(0.05, 0.2), budgets=(0.5,),
                n_train=150, n_val=40, n_calib=40, test_frac=0.2, data_root='/nonexistent'))

def _broken(cfg, out, progress=True, executor=None): raise RuntimeError("deliberately broken part")

@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "Tiny problems: one torch thread is as fast and never stalls on a busy core; restored for the other test modules"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "One tiny run of every part, with a broken part added at the end"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(cli.PARTS, 'broken', _broken)
        return run_reproduce(TINY, out_dir=tmp_path_factory.mktemp('results'), progress=False)

@pytest.fixture
def results(run): return json.loads((run/'results.json').read_text())

def _copy(run, tmp_path) -> Path:
    "A copy of the run folder that a test may change"
    return Path(shutil.copytree(run, tmp_path/run.name))

def test_every_part_ran(results):
    names = [p['name'] for p in results['parts']]
    assert names == list(cli.PARTS) + ['broken']
    assert set(cli.GROUPS['cl'] + cli.GROUPS['dmft'] + cli.GROUPS['fusion']) == set(cli.PARTS)
    for p in results['parts']:
        if p['name'] == 'broken': continue
        assert p['error'] is None, f"{p['name']} failed:\n{p['error']}"
        if p['name'].endswith('cifar'): assert p['skipped'] and 'CIFAR-10 was not found' in p['notes']; continue   # no data here
        assert p['claims'] and p['figures'] and p['tables'] and p['seconds'] > 0

def test_failed_part_is_reported_and_the_others_run(run, results):
    bad = [p for p in results['parts'] if p['error']]
    assert [p['name'] for p in bad] == ['broken'] and 'RuntimeError: deliberately broken part' in bad[0]['error']
    md, page = (run/'report.md').read_text(), (run/'report.html').read_text()
    assert 'This part failed' in md and 'deliberately broken part' in md
    assert '<pre class="error">' in page and 'deliberately broken part' in page and '<td class="failed">FAILED</td>' in page

def test_reports_link_every_figure_and_table(run, results):
    md, page = (run/'report.md').read_text(), (run/'report.html').read_text()
    md_figs = set(re.findall(r'!\[[^\]]*\]\(([^)]+)\)', md))
    html_figs = set(re.findall(r'<img src="([^"]+)"', page))
    produced = {p.name for p in run.glob('*.png')}
    assert md_figs == html_figs == produced == {f for p in results['parts'] for f in p['figures']}
    for f in produced: assert (run/f).stat().st_size > 5_000
    for t in run.glob('*.csv'):
        assert f'[{t.name}]({t.name})' in md and f'<a href="{t.name}">' in page
        n = len(pd.read_csv(t))
        assert f'Numbers: {t.name}' in page and (f'({n} rows)' in page or f'of {n} rows)' in page)

def test_claims_are_computed_from_the_saved_tables(run, results):
    md, page = (run/'report.md').read_text(), (run/'report.html').read_text()
    for p in results['parts']:
        if p['error']: continue
        recomputed = [asdict(c) for c in claims_for(p['name'], run)]
        assert p['claims'] == recomputed, p['name']
        assert [asdict(c) for c in load_part(run, p['name']).claims] == recomputed
        for c in recomputed:
            cls, mark = cli._MARKS[c['verdict']][:2]
            e = lambda t: re.sub(r'`([^`]+)`', r'<code>\1</code>', html.escape(t))    # prose in the page: `code` as <code>
            assert (f"<td>{e(c['statement'])}</td><td class=\"crit\">{e(c['criterion'])}</td><td>{e(c['measured'])}</td>"
                    f"<td>{e(c['interval'])}</td><td class=\"{cls}\">{mark}</td>") in page
            assert c['measured'].replace('|', '\\|') in md

def test_changed_numbers_change_the_verdict(run, tmp_path):
    "The verdicts follow the stored table: make vanilla averaging win one-shot and the fusion claim flips"
    r = _copy(run, tmp_path)
    st = sweep.run_store(r)
    one = st.table('fusion_oneshot')
    one.loc[one.method == 'vanilla', 'test'] = 1.0
    st.put_table('fusion_oneshot', one)
    c = claims_for('fusion', r)[0]
    assert not c.agrees and 'vanilla 100.0%' in c.measured

def test_a_folder_of_exports_gives_the_same_claims(run, tmp_path):
    "Without the store (a folder of CSV exports, like nbs/data), the fusion claims are computed from the CSVs, identically"
    r = _copy(run, tmp_path)
    (r/'results.db').unlink()
    assert [asdict(c) for c in claims_for('fusion', r)] == [asdict(c) for c in claims_for('fusion', run)]

def test_resume_recomputes_nothing(run, tmp_path, monkeypatch):
    r = _copy(run, tmp_path)
    stamp = {f: f.stat().st_mtime_ns for f in r.rglob('*') if f.is_file() and f.suffix in ('.csv', '.png', '.pt')}
    rows = lambda: dict(sweep.run_store(r)._rows("SELECT run_id, finished FROM runs WHERE sweep != 'parts'"))
    stored = rows()
    called = []
    for n in list(cli.PARTS):
        if not n.endswith('cifar'): monkeypatch.setitem(cli.PARTS, n, lambda *a, n=n, **k: called.append(n))
    monkeypatch.setitem(cli.PARTS, 'broken', _broken)
    assert reproduce(resume=str(r), workers=1) == 1           # the CLI: the broken part is retried and fails again
    assert called == []
    assert {f: f.stat().st_mtime_ns for f in stamp} == stamp
    assert stored and rows() == stored                         # no run, cell or parent stored again
    res = json.loads((r/'results.json').read_text())
    assert res['meta']['resumed'] and all(p['reused'] for p in res['parts'] if p['name'] not in ('broken', 'cl_cifar', 'fusion_cifar'))
    assert load_part(r, 'cl_cifar').skipped and load_part(r, 'fusion_cifar').skipped   # a skipped part looks again for its data, and skips again

def test_resumed_parts_reuse_their_sweeps_and_models(run, tmp_path, monkeypatch):
    "A part killed before it finished runs again, but its finished sweep runs and trained models are not recomputed"
    r = _copy(run, tmp_path)
    for n in ('cl_gamma', 'fusion'): sweep.run_store(r).delete(f'part:{n}')
    (r/'fusion_finetune.csv').unlink()
    def no_training(*a, **k): raise AssertionError("recomputed something that was saved")
    monkeypatch.setattr(sweep, 'run_group', no_training)
    monkeypatch.setattr(fx, '_train_job', no_training)
    out = run_reproduce(resume=r, only='cl_gamma,fusion', progress=False)
    for n in ('cl_gamma', 'fusion'): assert load_part(out, n).error is None and not load_part(out, n).reused
    assert (r/'fusion_finetune.csv').exists()

def test_resume_over_a_dask_cluster(run, tmp_path):
    "`--cluster ADDRESS`: the fusion training of a resumed run goes to a Dask scheduler"
    distributed = pytest.importorskip('distributed')
    r = _copy(run, tmp_path)
    sweep.run_store(r).delete('part:fusion'); shutil.rmtree(r/'fusion_models')
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        reproduce(resume=str(r), only='fusion', cluster=lc.scheduler_address)
    res = json.loads((r/'results.json').read_text())
    assert 'Dask cluster at' in res['meta']['executor'] and load_part(r, 'fusion').error is None
    assert len(list((r/'fusion_models').glob('*.pt'))) == 2 + 2 + 5 + 1   # parents, wide parents, finetunes, the narrow model alone

@pytest.mark.slow
def test_killed_run_resumes(tmp_path, monkeypatch):
    "SIGKILL a run (no clean-up) once a fusion parent is saved; the resumed run finishes without training it again"
    import os, signal, subprocess, sys, time
    fus = {**asdict(TINY.fusion), 'pairs': 2, 'epochs': 30}
    code = (f"import torch; torch.set_num_threads(1)\nfrom cl_scale.cli import ReproConfig, run_reproduce\n"
            f"run_reproduce(ReproConfig.make(workers=1, fusion={fus!r}), out_dir={str(tmp_path)!r}, only='fusion', progress=False)")
    p = subprocess.Popen([sys.executable, '-c', code])
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob('*/fusion_models/parent0.pt')):
            assert p.poll() is None and time.time() < deadline, "the run ended or stalled before saving a parent"
            time.sleep(0.2)
    finally: os.kill(p.pid, signal.SIGKILL); p.wait()
    run = next(tmp_path.glob('*/'))
    assert load_part(run, 'fusion') is None and (run/'config.json').exists()
    trained = []
    real = fx._train_job
    monkeypatch.setattr(fx, '_train_job', lambda job, report=None: trained.append(job['name']) or real(job, report))
    run_reproduce(resume=run, progress=False)
    assert 'parent0' not in trained and 'parent1' in trained
    assert load_part(run, 'fusion').error is None and (run/'report.html').exists()
