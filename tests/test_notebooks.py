"""Run every notebook as one test, the way `nbdev-test` does (nbdev's `test_nb`, in a fresh process per notebook).

A failing cell is reported with its notebook and cell number (nbdev prints `While Executing Cell #N` under the
notebook's path). Cells flagged with the project's `tst_flags` (`#| slow`) are skipped unless the environment
variable `CL_SCALE_TEST_FLAGS` names them (e.g. `CL_SCALE_TEST_FLAGS=slow`); the per-cell time limit (`cell_timeout`,
600 s) holds for the default run only, since a slow experiment cell may run for an hour."""
import os, subprocess, sys
import pytest
from conftest import ROOT, notebooks

_RUNNER = r"""
import sys
from nbdev.config import get_config
from nbdev.test import test_nb
cfg = get_config()
skip = cfg.tst_flags.split() if isinstance(cfg.tst_flags, str) else list(cfg.tst_flags or [])
ok, secs = test_nb(sys.argv[1], skip_flags=skip, force_flags=sys.argv[2].split(), basepath=cfg.config_path,
                   cell_timeout=None if sys.argv[2].strip() else (cfg.cell_timeout or None))
print(f"{sys.argv[1]}: {'passed' if ok else 'FAILED'} in {secs:.1f} s")
sys.exit(0 if ok else 1)
"""

@pytest.mark.parametrize('nb', notebooks(), ids=lambda p: p.name)
def test_notebook(nb):
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONUNBUFFERED': '1'}
    r = subprocess.run([sys.executable, '-c', _RUNNER, str(nb), os.environ.get('CL_SCALE_TEST_FLAGS', '')],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"notebook {nb.name} failed:\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}", pytrace=False)
