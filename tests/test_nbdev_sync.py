"""The notebooks are the source: `cl_scale/` must be exactly what `nbdev-export` makes of `nbs/`, and the
notebooks must be exactly what `nbdev-clean` leaves. Both are checked on a copy, so the test never edits the tree."""
import shutil, subprocess, sys
from pathlib import Path
import pytest
from conftest import ROOT

def _bin(name): return str(Path(sys.executable).parent/name)

@pytest.fixture(scope='module')
def copy(tmp_path_factory):
    d = tmp_path_factory.mktemp('proj')
    shutil.copy(ROOT/'pyproject.toml', d)
    shutil.copytree(ROOT/'nbs', d/'nbs', ignore=shutil.ignore_patterns('.ipynb_checkpoints', 'sidebar.yml'))
    (d/'cl_scale').mkdir()
    shutil.copy(ROOT/'cl_scale'/'__init__.py', d/'cl_scale')
    return d

def _run(cmd, cwd):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd} failed:\n{r.stdout}\n{r.stderr}"

def test_library_is_exported_from_notebooks(copy):
    _run([_bin('nbdev-export')], copy)
    made = {p.relative_to(copy/'cl_scale') for p in (copy/'cl_scale').rglob('*.py')}
    have = {p.relative_to(ROOT/'cl_scale') for p in (ROOT/'cl_scale').rglob('*.py')}
    assert made == have, f"modules differ: only from nbs {sorted(map(str, made - have))}, only in cl_scale/ {sorted(map(str, have - made))}"
    stale = [str(p) for p in sorted(made) if (copy/'cl_scale'/p).read_text() != (ROOT/'cl_scale'/p).read_text()]
    assert not stale, f"cl_scale/ is not what nbdev-export makes of nbs/ (edit the notebooks, then run nbdev-export): {stale}"

def test_notebooks_are_clean(copy):
    before = {p.name: p.read_bytes() for p in (copy/'nbs').glob('*.ipynb')}
    _run([_bin('nbdev-clean'), '--fname', str(copy/'nbs')], copy)
    dirty = [n for n, b in before.items() if (copy/'nbs'/n).read_bytes() != b]
    assert not dirty, f"run nbdev-clean and commit: these notebooks are not clean: {dirty}"
