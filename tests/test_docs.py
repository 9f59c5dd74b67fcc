"""Render the real `index` and `param` pages with `cl-scale-docs` and check them.

The pages are rendered once for the module (executing `00_param` takes about a minute), in a subprocess through the
command line, into a temporary folder. The HTML checks need only nbconvert; the browser checks load the pages from
`file://` in headless Chromium and look at what it shows: maths typeset by the local MathJax (no network), figures
drawn, and a sidebar. They are skipped, saying so, where Chromium is not installed."""
import re, shutil, subprocess, sys, tempfile
from pathlib import Path
import pytest
from conftest import ROOT

pytest.importorskip('nbconvert', reason="the docs extra is not installed: pip install 'cl_scale[docs]'")
from cl_scale.docs import remote_refs, page_name

NBS = ['index.ipynb', '00_param.ipynb']
PAGES = [page_name(n) for n in NBS]          # index.html, param.html
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                  '--disable-component-update', '--no-first-run', '--disable-sync', '--hide-scrollbars',
                  '--virtual-time-budget=20000']

def _docs_cmd(tmp):
    "The `cl-scale-docs` command: the installed console script, or the same CLI through a two-line runner"
    exe = Path(sys.executable).parent/'cl-scale-docs'
    if exe.exists(): return [str(exe)]
    runner = tmp/'run_docs.py'
    runner.write_text('from cl_scale.docs import build_docs\nbuild_docs()\n')
    return [sys.executable, str(runner)]

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "Folder of the rendered site, with `README.md` next to it"
    tmp = tmp_path_factory.mktemp('site')
    cmd = _docs_cmd(tmp) + ['--notebooks', ' '.join(NBS), '--nbs-path', str(ROOT/'nbs'), '--dest', str(tmp/'_docs'),
                            '--readme', str(tmp/'README.md'), '--quiet']
    r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"cl-scale-docs failed:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"
    return tmp/'_docs'

def test_files(site):
    for p in PAGES: assert (site/p).stat().st_size > 10_000, p
    assert (site/'mathjax'/'MathJax.js').exists()
    assert (site/'mathjax'/'config'/'TeX-AMS-MML_HTMLorMML-full.js').exists()

@pytest.mark.parametrize('page', PAGES)
def test_page_html(site, page):
    html = (site/page).read_text()
    title = re.search(r'<title>(.*?)</title>', html, re.S).group(1)
    assert 'cl_scale' in title
    assert '<h1 class="title">' in html and '<div class="subtitle">' in html
    nav = re.search(r'<nav class="cl-sidebar">(.*?)</nav>', html, re.S).group(1)
    links = re.findall(r'href="([^"]+)"', nav)
    assert links[:2] == ['index.html', 'index.html'] and 'param.html' in links   # brand, then index first
    assert f'aria-current="page" class="cl-page active" href="{page}"' in nav
    assert '<script src="mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full">' in html
    assert remote_refs(html) == [], remote_refs(html)
    assert 'nbdev_export' not in html and 'Export -' not in html
    assert 'Traceback (most recent call last)' not in html

def test_param_page(site):
    html = (site/'param.html').read_text()
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', html)) >= 1   # the coordinate-check figure
    assert 'from fastcore.test import' not in html                                # a `#| hide` cell
    text = re.sub(r'<[^>]+>', '', html)
    assert 'class Parameterization' in text                                        # exported source, and its
    assert re.search(r'<h3[^>]*>Parameterization', html) and '### Param' not in html  # show_doc as a heading
    assert '$\\gamma_0$' in html                                                   # maths left for MathJax

def test_readme(site):
    md = (site.parent/'README.md').read_text()
    assert md.startswith('# cl_scale\n') and '\n> ' in md
    assert not re.search(r'^\s*#\|', md, re.M) and '```python' in md

# --- In a browser ---

def _chromium(*args, timeout=120):
    if not CHROMIUM: pytest.skip("chromium not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f'--user-data-dir={profile}', *args],
                           capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout

_doms = {}
def _dom(site, page):
    "The page's DOM after its scripts ran (MathJax typesetting included), from headless Chromium"
    if page not in _doms: _doms[page] = _chromium('--dump-dom', (site/page).as_uri())
    return _doms[page]

@pytest.mark.parametrize('page', PAGES)
def test_maths_typeset(site, page):
    dom = _dom(site, page)
    n_tex = len(re.findall(r'<script type="math/tex', dom))     # MathJax replaced each $...$ by one of these
    n_out = len(re.findall(r'<span class="MathJax" ', dom))     # ... and put its typeset output before it
    assert n_tex > 0, "MathJax found no maths: did it load?"
    assert n_out == n_tex, f"{n_out} of {n_tex} formulas typeset"
    assert 'Math Processing Error' not in dom and 'class="merror"' not in dom
    visible = re.sub(r'<(script|style|pre|code)\b.*?</\1>', '', dom, flags=re.S)
    assert not re.search(r'\$\\[a-zA-Z]+', visible), "raw TeX left in the page"

def test_figures_in_browser(site):
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', _dom(site, 'param.html'))) >= 1

def test_screenshot(site, tmp_path):
    import matplotlib.image as mpimg, numpy as np
    png = tmp_path/'param.png'
    _chromium('--window-size=1200,900', f'--screenshot={png}', (site/'param.html').as_uri())
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 20_000
    im = mpimg.imread(png)[..., :3]
    assert im.shape[:2] == (900, 1200)
    assert im.std() > 0.05, "the page is (nearly) blank"
    side, content = im[:, :200], im[:, 300:]
    blue = np.array([0x27, 0x80, 0xe3]) / 255                     # the highlighted page in the sidebar
    assert (np.abs(side - blue).max(-1) < 0.05).sum() > 500, "no highlighted sidebar entry"
    assert (content.mean(-1) < 0.3).sum() > 2000, "no text in the page"
