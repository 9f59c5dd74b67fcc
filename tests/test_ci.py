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
