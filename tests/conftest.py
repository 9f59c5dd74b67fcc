"Shared helpers for the test suite: where the project is, and which notebooks it has"
import os
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'

def notebooks():
    "The notebooks nbdev-test would run, in file-name order (names starting with `_` or `.` are skipped)"
    return sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))

@pytest.fixture(scope='session')
def root(): return ROOT
