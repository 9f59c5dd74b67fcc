"The README states two set-up commands; `.ci/run` must run the second one exactly, and the README must be made from `nbs/index.ipynb`."
import re
from conftest import ROOT

def readme_commands():
    "The shell commands in the README's fenced ```sh blocks, in order"
    return [c.strip() for c in re.findall(r"```sh\n(.*?)```", (ROOT/'README.md').read_text(), re.S)]

def test_readme_states_two_commands():
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    assert 'cl-scale-reproduce --quick' in cmds[0]
    assert 'pytest' in cmds[1] and '[dev]' in cmds[1]
    for c in cmds: assert 'torch==2.13.0' in c, "the commands must take the CPU build of torch where it is available"

def test_ci_runs_the_readme_test_command():
    ci = [l.strip() for l in (ROOT/'.ci'/'run').read_text().splitlines() if l.strip() and not l.lstrip().startswith('#')]
    assert ci[-1] == readme_commands()[1], "the last command of .ci/run must be the README's test command, verbatim"

def test_readme_is_made_from_index():
    "Every prose cell of nbs/index.ipynb is in README.md (regenerate it with `cl-scale-docs --notebooks index`)"
    import json
    readme = (ROOT/'README.md').read_text()
    cells = json.loads((ROOT/'nbs'/'index.ipynb').read_text())['cells']
    for c in cells:
        if c['cell_type'] != 'markdown': continue
        text = ''.join(c['source']).strip()
        if text.startswith('# '): text = text.split('\n', 1)[1].strip()   # the title cell becomes '# title' + '> summary'
        assert text in readme, f"README.md is stale: regenerate it from nbs/index.ipynb ({text[:60]!r}…)"
    code = [''.join(c['source']).strip() for c in cells if c['cell_type'] == 'code' and not ''.join(c['source']).startswith('#| hide')]
    for src in code: assert src in readme, f"README.md is stale: code cell missing ({src[:60]!r}…)"
