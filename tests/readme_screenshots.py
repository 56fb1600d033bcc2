"""Screenshots of the dashboards and of the static gallery for the README (not a test: run it by hand).

    python tests/readme_screenshots.py --tokenizer runs/imagenette_vqkd/tokenizer.safetensors \
        --data-path ../shared/data/imagenette2-224/train --out nbs/images

Runs `nbs/codebook_gallery.ipynb` (papermill's parameters injected) in JupyterLab + headless Chromium with the same
machinery as `tests/test_browser.py`, selects a code in the gallery and the code map, and saves one PNG per
dashboard plus the top of the written `gallery.html`.
"""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from browser_utils import JupyterLab, LabNotebook, launch_chromium, parameterize, require_browser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--tokenizer', required=True)
    ap.add_argument('--data-path', required=True)
    ap.add_argument('--max-images', type=int, default=0)
    ap.add_argument('--sort', default='usage')
    ap.add_argument('--code-map', default='umap')
    ap.add_argument('--out', default=str(REPO/'nbs'/'images'))
    ap.add_argument('--timeout', type=float, default=900)
    a = ap.parse_args()
    require_browser()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix='b2l_shots_'))
    (tmp/'root').mkdir(); (tmp/'home').mkdir()
    nb_path = parameterize(REPO/'nbs'/'codebook_gallery.ipynb', tmp/'root'/'codebook_gallery.ipynb',
                           tokenizer=str(Path(a.tokenizer).resolve()), data_path=str(Path(a.data_path).resolve()),
                           max_images=a.max_images, sort=a.sort, code_map=a.code_map, out_dir=str(tmp/'root'/'gallery'))
    lab = JupyterLab(tmp/'root', tmp/'home', timeout=120).start()
    try:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_context(viewport={'width': 1400, 'height': 1600}).new_page()
            nb = LabNotebook(page, lab, nb_path.name, out)
            nb.open(); nb.run_all(a.timeout)
            for css, name in (('b2l-mask-explorer', 'mask_explorer'), ('b2l-gallery', 'codebook_gallery'),
                              ('b2l-util', 'utilisation'), ('b2l-codemap', 'code_map')):
                el = nb.widget(css); el.scroll_into_view_if_needed(); nb.screenshot(name, el)
            page.goto((tmp/'root'/'gallery'/'gallery.html').as_uri())
            page.set_viewport_size({'width': 1000, 'height': 900}); nb.screenshot('gallery_html')
            browser.close()
    finally: lab.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    print('wrote', sorted(str(f) for f in out.glob('*.png')))


if __name__ == '__main__': main()
