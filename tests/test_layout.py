"The README's module table is the package's real map: every module has a row, and its imports column is what the code imports, up the table only"
import ast, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

def imports(path, lazy:bool):
    "The cl_scale modules that `path` imports: statically (lazy=False) or by importlib.import_module (lazy=True)"
    out = set()
    for n in ast.walk(ast.parse(Path(path).read_text())):
        if lazy:
            if (isinstance(n, ast.Call) and getattr(n.func, 'attr', None) == 'import_module' and n.args
                    and isinstance(n.args[0], ast.Constant) and str(n.args[0].value).startswith('cl_scale.')):
                out.add(n.args[0].value.split('.')[1])
        elif isinstance(n, ast.ImportFrom):
            if n.level == 1: out.update([n.module.split('.')[0]] if n.module else [a.name for a in n.names])
            elif (n.module or '').startswith('cl_scale.'): out.add(n.module.split('.')[1])
        elif isinstance(n, ast.Import):
            out.update(a.name.split('.')[1] for a in n.names if a.name.startswith('cl_scale.'))
    return out

def table():
    "[(module, set of backticked names in its imports column)] in the README's row order"
    rows = []
    for line in (ROOT/'README.md').read_text().splitlines():
        m = re.match(r"\| `\w+` \| `cl_scale\.(\w+)` \|.*\| ([^|]*) \|$", line)
        if m: rows.append((m.group(1), set(re.findall(r'`(\w+)`', m.group(2)))))
    return rows

def test_every_module_has_a_row():
    mods = {p.stem for p in (ROOT/'cl_scale').glob('*.py') if not p.stem.startswith('_')}
    assert {m for m, _ in table()} == mods

def test_the_imports_column_is_what_the_code_imports():
    for mod, listed in table():
        f = ROOT/'cl_scale'/f'{mod}.py'
        assert listed == imports(f, lazy=False) | imports(f, lazy=True), mod

def test_imports_point_up_the_table():
    order = [m for m, _ in table()]
    for i, mod in enumerate(order):
        below = set(order[i:])
        assert not imports(ROOT/'cl_scale'/f'{mod}.py', lazy=False) & below, f"{mod} imports a module at or below its row"

def test_no_control_characters_in_notebooks():
    "A backslash lost in a Python string (\\r, \\a in LaTeX) becomes a control character and breaks the maths on the page"
    import json
    bad = [(p.name, c.get('id'), hex(ord(ch))) for p in sorted((ROOT/'nbs').glob('*.ipynb'))
           for c in json.loads(p.read_text())['cells'] for ch in ''.join(c['source']) if ord(ch) < 32 and ch not in '\n\t']
    assert not bad, bad
