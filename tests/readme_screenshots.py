"""Screenshots of the dashboards and of the static gallery for the README (not a test: run it by hand).

    python tests/readme_screenshots.py --tokenizer runs/imagenette_vqkd/tokenizer.safetensors \
        --data-path ../shared/data/imagenette2-224/train --out nbs/images

Runs `nbs/codebook_gallery.ipynb` (papermill's parameters injected) in JupyterLab + headless Chromium with the same
machinery as `tests/test_browser.py`, selects a code in the gallery and the code map, and saves one PNG per
dashboard plus the top of the written `gallery.html`.

    python tests/readme_screenshots.py --inspect --backbone runs/imagenette_mim/mim.safetensors \
        --mim-model runs/imagenette_mim/mim.safetensors --tokenizer runs/imagenette_vqkd/tokenizer.safetensors \
        --pixel-decoder runs/imagenette_pixdec/pixel_decoder.safetensors \
        --data-path ../shared/data/imagenette2-224/train --img-size 224 --out nbs/images

With `--inspect` it runs `nbs/inspect_model.ipynb` instead (as `tests/test_browser_inspect.py` does) and saves the
attention viewer as `attention.png` and the MIM prediction viewer as `mim_predictions.png` (only the first without
`--mim-model`).
"""
import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from browser_utils import JupyterLab, LabNotebook, launch_chromium, parameterize, require_browser  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VIEWPORT = {'width': 1400, 'height': 1600}


@contextlib.contextmanager
def lab_notebook(nb_path: Path, home: Path, out: Path, timeout: float):
    "JupyterLab serving `nb_path`'s folder and a headless Chromium page on the notebook, all cells run; stopped after."
    lab = JupyterLab(nb_path.parent, home, timeout=120).start()
    try:
        from playwright.sync_api import sync_playwright
        with sync_playwright() as p:
            browser = launch_chromium(p)
            try:
                nb = LabNotebook(browser.new_context(viewport=VIEWPORT).new_page(), lab, nb_path.name, out)
                nb.open(); nb.run_all(timeout)
                yield nb
            finally: browser.close()
    finally: lab.stop()


def shoot(nb: LabNotebook, shots: list[tuple[str, str]]):
    "Save the widget carrying each CSS class as `<out>/<name>.png`."
    for css, name in shots:
        el = nb.widget(css); el.scroll_into_view_if_needed(); nb.screenshot(name, el)


def gallery(a, tmp: Path, out: Path):
    "The codebook gallery notebook: its four dashboards and the top of the static gallery.html."
    nb_path = parameterize(REPO/'nbs'/'codebook_gallery.ipynb', tmp/'root'/'codebook_gallery.ipynb',
                           tokenizer=str(Path(a.tokenizer).resolve()), data_path=str(Path(a.data_path).resolve()),
                           max_images=a.max_images, sort=a.sort, code_map=a.code_map, out_dir=str(tmp/'root'/'gallery'))
    with lab_notebook(nb_path, tmp/'home', out, a.timeout) as nb:
        shoot(nb, [('b2l-mask-explorer', 'mask_explorer'), ('b2l-gallery', 'codebook_gallery'),
                   ('b2l-util', 'utilisation'), ('b2l-codemap', 'code_map')])
        nb.page.goto((tmp/'root'/'gallery'/'gallery.html').as_uri())
        nb.page.set_viewport_size({'width': 1000, 'height': 900}); nb.screenshot('gallery_html')


def absolute(spec: str) -> str:
    "A file given on the command line as an absolute path ('' and 'embedded' stay; a 'kind:path' backbone keeps its kind)."
    if spec in ('', 'embedded'): return spec
    from beitv2_lab.evaluate import BACKBONE_KINDS
    head, sep, rest = spec.partition(':')
    return f'{head}:{Path(rest).resolve()}' if sep and head in BACKBONE_KINDS else str(Path(spec).resolve())


def inspect(a, tmp: Path, out: Path):
    "The model-inspection notebook: the attention viewer and (with a MIM model) the prediction viewer."
    nb_path = parameterize(REPO/'nbs'/'inspect_model.ipynb', tmp/'root'/'inspect_model.ipynb',
                           backbone=absolute(a.backbone), second_backbone=absolute(a.second_backbone),
                           mim_model=absolute(a.mim_model), tokenizer=absolute(a.tokenizer),
                           pixel_decoder=absolute(a.pixel_decoder), data_path=absolute(a.data_path),
                           n_images=a.n_images, img_size=a.img_size, seed=a.seed)
    with lab_notebook(nb_path, tmp/'home', out, a.timeout) as nb:
        shoot(nb, [('b2l-attn-viewer', 'attention')] + ([('b2l-mimpred', 'mim_predictions')] if a.mim_model else []))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--inspect', action='store_true', help='screenshot nbs/inspect_model.ipynb instead of the codebook gallery')
    ap.add_argument('--tokenizer', default='', help='the tokenizer (gallery: required; inspect: the MIM model\'s)')
    ap.add_argument('--data-path', required=True)
    ap.add_argument('--max-images', type=int, default=0, help='gallery')
    ap.add_argument('--sort', default='usage', help='gallery')
    ap.add_argument('--code-map', default='umap', help='gallery')
    ap.add_argument('--backbone', default='', help='inspect: required (any file evaluate.load_backbone reads)')
    ap.add_argument('--second-backbone', default='', help='inspect: empty for the random-init twin')
    ap.add_argument('--mim-model', default='', help='inspect: with --tokenizer, for the prediction viewer')
    ap.add_argument('--pixel-decoder', default='', help="inspect: a VQ-KD tokenizer's pixel decoder")
    ap.add_argument('--img-size', type=int, default=224, help='inspect')
    ap.add_argument('--n-images', type=int, default=4, help='inspect')
    ap.add_argument('--seed', type=int, default=0, help='inspect')
    ap.add_argument('--out', default=str(REPO/'nbs'/'images'))
    ap.add_argument('--timeout', type=float, default=900)
    a = ap.parse_args()
    if a.inspect and not a.backbone: ap.error('--inspect needs --backbone')
    if not a.inspect and not a.tokenizer: ap.error('the gallery needs --tokenizer')
    require_browser()
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix='b2l_shots_'))
    (tmp/'root').mkdir(); (tmp/'home').mkdir()
    try: (inspect if a.inspect else gallery)(a, tmp, out)
    finally: shutil.rmtree(tmp, ignore_errors=True)
    print('wrote', sorted(str(f) for f in out.glob('*.png')))


if __name__ == '__main__': main()
