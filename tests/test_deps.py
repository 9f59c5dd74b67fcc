"nbdev is a docs/dev extra, not a runtime dependency: every module imports without it, and `cl-scale-docs` says what to install"
import ast, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (ROOT/'cl_scale').glob('*.py') if p.stem not in ('__init__', '_modidx'))

_BLOCK = """
import sys, importlib.abc
class _NoNbdev(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('nbdev', 'execnb'): raise ImportError(f'{name} is blocked in this test')
sys.meta_path.insert(0, _NoNbdev())
"""

def _run(code):
    return subprocess.run([sys.executable, '-c', _BLOCK + code], capture_output=True, text=True, cwd=ROOT, timeout=300)

def test_every_module_imports_without_nbdev():
    r = _run(f"import importlib\nfor m in {MODULES!r}: importlib.import_module('cl_scale.' + m)\nprint('ok')")
    assert r.returncode == 0 and r.stdout.strip() == 'ok', r.stderr[-2000:]

def test_docs_without_nbdev_says_what_to_install():
    r = _run("from cl_scale.docs import build_docs\nbuild_docs.__wrapped__(quiet=True)")
    assert r.returncode != 0 and "pip install 'cl_scale[docs]'" in r.stderr, r.stderr[-2000:]

def test_docs_uses_only_nbdevs_public_api():
    tree = ast.parse((ROOT/'cl_scale'/'docs.py').read_text())
    private = [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or '').startswith('nbdev')
               for a in n.names if a.name.startswith('_')]
    assert not private, private

def test_nbdev_is_not_a_runtime_dependency():
    import tomllib
    proj = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
    assert not any(d.startswith('nbdev') for d in proj['dependencies'])
    assert any(d.startswith('nbdev') for d in proj['optional-dependencies']['docs'])
