"""The dashboards in a real browser: JupyterLab on 127.0.0.1, headless Debian Chromium driven by playwright.

The test puts `nbs/codebook_gallery.ipynb` (parameters injected as papermill does, on a tiny tokenizer and 40
Imagenette images) into a temporary root, opens it in JupyterLab, runs all cells from the Run menu, then moves a control of the mask explorer (types a new seed) and of the codebook gallery (clicks "next page")
and checks that the picture each one renders changed, while the other dashboard's picture did not. Screenshots of
the page and of every dashboard go to `$BEITV2_LAB_ARTIFACTS/<test>/` (default tests/artifacts/).

Needs Debian's `chromium` (/usr/bin/chromium, or `BEITV2_LAB_CHROMIUM`) and the `playwright` python package; the
browser is never downloaded. Without them the tests skip, unless `BEITV2_LAB_REQUIRE_BROWSER` is set (CI): then
they fail.
"""
import contextlib
import time
from pathlib import Path

import pytest

from browser_utils import LabNotebook, artifacts_dir


# the `lab`, `browser` and `page` fixtures: tests/conftest.py (a server and a browser per test file)


# ------------------------------------------------------------------------------------------ the dashboard notebook
REPO = Path(__file__).resolve().parents[1]


def tiny_run(run_dir: Path, data_root: Path, n_per_class: int = 4, img_size: int = 64, codebook_size: int = 64) -> Path:
    """A run folder as `train_vqkd` leaves it, in miniature: `tokenizer.safetensors` (a tiny tokenizer whose codebook
    is placed by one training-mode quantizer call on encoder outputs of real images) and a few `metrics.jsonl` rows."""
    import json
    import torch
    from beitv2_lab.data import EvalTransform, ImageFolder
    from beitv2_lab.tokenizer import create_tokenizer, save_tokenizer
    torch.manual_seed(0)
    root = data_root/'train'
    files = [f for d in sorted(root.iterdir()) if d.is_dir() for f in sorted(d.glob('*.JPEG'))[:n_per_class]]
    data = ImageFolder(root, transform=EvalTransform(img_size, mean=None), files=files)
    tok = create_tokenizer('vqkd_tiny', img_size=img_size, codebook_size=codebook_size)
    with torch.no_grad():
        tok.train(); tok.quantize(tok.forward_encoder(torch.stack([data[i]['image'] for i in range(len(data))]))); tok.eval()
    run_dir.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tok, run_dir/'tokenizer.safetensors')
    rows = [dict(step=s, loss=1 / s, utilisation=min(100., 20. * s), perplexity=8. * s, dead_codes=10 - s, restarts=3 * s)
            for s in range(1, 6)]
    (run_dir/'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return run_dir/'tokenizer.safetensors'


def gallery_notebook(root: Path, data_root: Path) -> Path:
    """`nbs/codebook_gallery.ipynb` with papermill's parameters injected (absolute paths: the kernel runs in the
    server's root), on 40 Imagenette images and a tiny tokenizer; PCA for the code map (UMAP compiles for ~30 s)."""
    from browser_utils import parameterize
    tok = tiny_run(root/'run', data_root)
    return parameterize(REPO/'nbs'/'codebook_gallery.ipynb', root/'codebook_gallery.ipynb', tokenizer=str(tok),
                        data_path=str(data_root/'train'), max_images=40, top_k=4, context=2, n_codes=64,
                        num_workers=0, code_map='pca', out_dir=str(root/'gallery'))


# ---------------------------------------------------------------------------------------------------- the drive
def drive_dashboards(nb: LabNotebook, run_timeout: float = 180) -> dict:
    """Open the notebook, Run All Cells, then change the mask explorer's seed and click the gallery's next page;
    each must change its own picture and leave the other dashboard's picture alone. Returns timings (s)."""
    t0 = time.monotonic(); times = {}
    nb.open(); nb.screenshot('01_opened'); times['open'] = time.monotonic() - t0
    nb.run_all(run_timeout); times['run_all'] = time.monotonic() - t0
    nb.screenshot('02_ran')
    explorer, gallery = nb.widget('b2l-mask-explorer'), nb.widget('b2l-gallery')
    mview, gview = nb.widget('b2l-mask-view'), nb.widget('b2l-gallery-view')
    nb.screenshot('mask_explorer_before', explorer); nb.screenshot('gallery_before', gallery)
    m0, g0 = nb.stable_signature(mview), nb.stable_signature(gview)

    seed = nb.widget('b2l-mask-seed')
    before_seed = nb.read_int(seed)
    if seed.locator('input').count(): nb.set_int(seed, before_seed + 1)     # IntText: type the next seed, Enter
    else: nb.nudge_slider(seed)                                            # IntSlider: ArrowRight on its handle
    m1 = nb.wait_changed(mview, m0)
    assert nb.read_int(seed) == before_seed + 1
    assert m1['imgs'] != m0['imgs'] and m1['pixels'] != m0['pixels'], 'the mask view did not change'
    assert nb.content(nb.stable_signature(gview)) == nb.content(g0), 'changing the mask seed changed the gallery'
    nb.screenshot('mask_explorer_after', explorer); times['mask'] = time.monotonic() - t0

    page_ctl = nb.widget('b2l-gallery-page')
    before_page = nb.read_int(page_ctl)
    nb.widget('b2l-gallery-next').click()
    g1 = nb.wait_changed(gview, g0)
    assert nb.read_int(page_ctl) == before_page + 1, 'the page control did not advance'
    assert g1['imgs'] != g0['imgs'] and g1['pixels'] != g0['pixels'], 'the gallery view did not change'
    assert nb.content(nb.stable_signature(mview)) == nb.content(m1), 'paging the gallery changed the mask view'
    nb.screenshot('gallery_after', gallery); nb.screenshot('03_after')
    times['gallery'] = time.monotonic() - t0
    return times


@pytest.mark.serial
def test_dashboards_in_jupyterlab(lab, page):
    """nbs/codebook_gallery.ipynb on Imagenette, run in JupyterLab + Chromium: moving a control of the mask explorer
    and of the codebook gallery changes what each renders (and only that)."""
    from beitv2_lab.test_utils import imagenette_path
    path = gallery_notebook(lab.root, imagenette_path())
    nb = LabNotebook(page, lab, path.name, artifacts_dir('dashboards'))
    try:
        times = drive_dashboards(nb)
        for css, name in (('b2l-util', 'utilisation'), ('b2l-codemap', 'code_map')): nb.screenshot(name, nb.widget(css))
    except Exception:
        with contextlib.suppress(Exception): nb.screenshot('99_failure')     # the page as it was when it failed
        raise
    assert (lab.root/'gallery'/'gallery.html').stat().st_size > 0            # the static gallery was written too
    print('browser test timings (s):', {k: round(v, 1) for k, v in times.items()})
