"""The documentation site: `docs/build.py` renders every notebook and guide (MkDocs, strict: a missing image, link or
anchor fails the build), then headless Chromium visits every page from a local http.server and fails on a page that
does not render, an image that does not load or an internal link or anchor that leads nowhere. Screenshots of the
home page and of a module page go to the artifacts, and to nbs/images/ (for the README) when
`BEITV2_LAB_UPDATE_IMAGES=1`: a plain test run leaves the tracked pictures alone."""
import functools
import importlib.util
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag

import pytest

from browser_utils import artifacts_dir, launch_chromium, require_browser

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.serial                                    # a real browser, as tests/test_browser.py
SHOTS = {'docs_home.png': '', 'docs_module.png': 'api/train/#config_from'}   # screenshot -> page; copied into nbs/images/
VIEWPORT = dict(width=1280, height=900)                              # wide enough for Material's nav and contents


def html_of(site_dir: Path, out: str) -> Path:
    "The HTML file MkDocs writes for page source `out` ('api/core.md' -> api/core/index.html)."
    stem = Path(out).with_suffix('')
    return site_dir/(stem.parent if stem.name == 'index' else stem)/'index.html'


def url_of(base: str, site_dir: Path, index_html: Path) -> str:
    "The address of a built page's index.html under `base`."
    rel = index_html.parent.relative_to(site_dir).as_posix()
    return base if rel == '.' else f'{base}{rel}/'


def load_docs_build():
    "docs/build.py as a module (docs/ is not a package)."
    spec = importlib.util.spec_from_file_location('docs_build', REPO/'docs'/'build.py')
    mod = sys.modules['docs_build'] = importlib.util.module_from_spec(spec)     # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


docs_build = load_docs_build()


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The whole site, built once into a temporary folder: (site folder, its pages, build seconds)."
    tmp = tmp_path_factory.mktemp('docs')
    t0 = time.monotonic()
    pages = docs_build.build(site_dir=tmp/'site', src_dir=tmp/'src')
    return tmp/'site', pages, time.monotonic() - t0


def test_site_has_every_notebook_and_guide(site):
    "A page per notebook and per guide; a run notebook's parameters are its config's fields, comments included."
    site_dir, pages, seconds = site
    kinds = {p.src.stem: p.kind for p in pages}
    assert {'train_vqkd', 'pretrain_mim', 'train_dvae', 'pretrain_ibot', 'compare_targets', 'eval',
            'codebook_gallery'} <= {k for k, v in kinds.items() if v == 'run'}
    assert {'00_core', '30_distrib', '31_train', '60_compare'} <= {k for k, v in kinds.items() if v == 'module'}
    assert {'architecture', 'scaling-out', 'dashboards', 'comparison', 'performance', 'developing'} <= {k for k, v in kinds.items() if v == 'guide'}
    for p in pages: assert html_of(site_dir, p.out).is_file(), p.out
    from beitv2_lab.task_vqkd import VQKDConfig
    rows = {r['name']: r for r in docs_build.field_rows(VQKDConfig)}
    assert rows['batch_size']['comment'] == 'images per step per process'      # inherited from RunConfig
    assert rows['out_dir']['comment'].endswith('tokenizer.safetensors') and rows['out_dir']['default'] == 'runs/vqkd'
    html = (site_dir/'runs'/'train_vqkd'/'index.html').read_text()
    for name in rows: assert f'<code>{name}</code>' in html, name
    assert 'images per step per process' in html and 'K, number of codes' in html
    assert seconds < 90, f'the build took {seconds:.0f} s'


def test_a_broken_page_fails_the_build(tmp_path):
    "A missing image, a link to no page and an anchor that does not exist each fail the strict build, by name."
    guides = tmp_path/'guides'; guides.mkdir()
    (guides/'broken.md').write_text('# Broken\n\n![gone](../../nbs/images/no_such_picture.png)\n\n'
                                    '[nowhere](no_such_page.md)\n\n[the top](#no-such-anchor)\n')
    with pytest.raises(RuntimeError) as e:
        docs_build.build(site_dir=tmp_path/'site', src_dir=tmp_path/'src', guides_dir=guides, only=['index'])
    for what in ('no_such_picture.png', 'no_such_page.md', 'no-such-anchor'): assert what in str(e.value), str(e.value)
    (guides/'broken.md').write_text('# Fixed\n\n![a picture](../../nbs/images/compare_targets.png)\n')
    docs_build.build(site_dir=tmp_path/'site', src_dir=tmp_path/'src', guides_dir=guides, only=['index'])
    assert (tmp_path/'site'/'images'/'compare_targets.png').is_file()
    with pytest.raises(ValueError, match='not empty and was not made by docs/build.py'):
        docs_build.build(site_dir=tmp_path/'site', src_dir=guides, guides_dir=guides, only=['index'])


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args): pass


@pytest.fixture(scope='module')
def served(site):
    "The built site on http://127.0.0.1:<free port>/."
    server = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(site[0])))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_port}/'
    server.shutdown(); server.server_close()


_IMAGES_JS = """async () => Promise.all(Array.from(document.images).map(async (img) => {
  try { await img.decode(); } catch (e) {}
  return [img.currentSrc || img.src, img.naturalWidth];
}))"""


def test_every_page_renders_in_chromium(site, served):
    """Every page loads with content, every image loads, every internal link and anchor reaches something; the search
    index lists every page."""
    require_browser()
    from playwright.sync_api import sync_playwright
    site_dir, pages, _ = site
    urls = sorted(url_of(served, site_dir, p) for p in site_dir.rglob('index.html'))
    assert len(urls) == len(pages), (len(urls), len(pages))
    problems, ids, links = [], {}, {}
    shots = artifacts_dir('docs_site')
    # the search index is checked as data, once; each page would otherwise index it again in the browser (half the time)
    with urllib.request.urlopen(served + 'search/search_index.json', timeout=10) as r: index = json.load(r)
    indexed = {d['location'].split('#')[0] for d in index['docs']}
    assert {url.removeprefix(served) for url in urls} <= indexed, sorted({url.removeprefix(served) for url in urls} - indexed)
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = browser.new_page(viewport=VIEWPORT)
        page.route('**/search/search_index.json', lambda route: route.abort())
        for url in urls:
            resp = page.goto(url, wait_until='load')
            if resp is None or not resp.ok: problems.append(f'{url}: HTTP {resp.status if resp else "no response"}'); continue
            article = page.locator('article.md-content__inner')
            text = article.inner_text().strip() if article.count() == 1 else ''
            if len(text.splitlines()) < 2: problems.append(f'{url}: no content ({text[:80]!r})')
            problems += [f'{url}: image {src} did not load' for src, width in page.evaluate(_IMAGES_JS) if width == 0]
            ids[url] = set(page.evaluate("() => Array.from(document.querySelectorAll('[id]'), e => e.id)"))
            for href in page.evaluate("() => Array.from(document.querySelectorAll('a[href]'), a => a.href)"):
                if href.startswith(served): links.setdefault(href, url)
        for name, path in SHOTS.items():
            page.goto(served + path, wait_until='load')
            page.screenshot(path=str(shots/name), animations='disabled')
        browser.close()
    for href, source in links.items():
        target, frag = urldefrag(href)
        if target not in ids:
            try: urllib.request.urlopen(target, timeout=10).close()
            except urllib.error.HTTPError as e: problems.append(f'{source}: link to {href} gives HTTP {e.code}'); continue
        if frag and target in ids and unquote(frag) not in ids[target]:
            problems.append(f'{source}: link to {href}: no element with id {unquote(frag)!r}')
    assert not problems, '\n'.join(problems)
    for name in SHOTS:
        assert (shots/name).stat().st_size > 10_000, f'{name}: the screenshot is missing or blank'
        if os.environ.get('BEITV2_LAB_UPDATE_IMAGES') == '1': small_png(shots/name, REPO/'nbs'/'images'/name)


def small_png(src: Path, dst: Path):
    "Write screenshot `src` to `dst` in 256 colours (a third of the bytes; a page's flat colours survive)."
    from PIL import Image
    with Image.open(src) as im:
        im.convert('RGB').quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(dst, optimize=True)
