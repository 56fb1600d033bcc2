"""The model-inspection dashboards in a real browser: JupyterLab on 127.0.0.1, headless Debian Chromium via playwright.

The test puts `nbs/inspect_model.ipynb` (papermill's parameters injected) into a temporary root on tiny models: a MIM
model (64 px, 4x4 patches, K=16) as the backbone beside its random-init twin, that MIM model's predictions against a
VQ-KD tokenizer, drawn by a pixel decoder trained on nothing (the drawing path is what is tested), over two Imagenette
images. It opens the notebook in JupyterLab, runs all cells from the Run menu, then moves the attention viewer's head
(dropdown) and layer (slider), and the prediction viewer's masked patch (dropdown) and mask seed (typed): each move
must change its own viewer's picture (and the patch, its top-k table) and leave the other viewer's picture alone.
Screenshots go to `$BEITV2_LAB_ARTIFACTS/inspect/` (default tests/artifacts/).

Needs Debian's `chromium` and the `playwright` package (see browser_utils); without them it skips, unless
`BEITV2_LAB_REQUIRE_BROWSER` is set (CI): then it fails.
"""
import contextlib
import time
from pathlib import Path

import pytest

from browser_utils import LabNotebook, artifacts_dir, parameterize

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = 'inspect'


# the `lab`, `browser` and `page` fixtures: tests/conftest.py (a server and a browser per test file)


# ------------------------------------------------------------------------------------------ the inspection notebook
def tiny_models(root: Path, codebook_size: int = 16, code_dim: int = 8) -> dict:
    "A tiny MIM model file (64 px, 4x4 patches), the VQ-KD tokenizer file it predicts, and a pixel decoder file for it."
    import torch
    from beitv2_lab.mim import create_mim
    from beitv2_lab.task_mim import save_mim
    from beitv2_lab.task_pixdec import PixelDecoder, codebook_fingerprint, save_pixel_decoder
    from beitv2_lab.tokenizer import create_tokenizer, save_tokenizer
    torch.manual_seed(1)                                       # not the random-init twin's seed (0): the two rows differ
    (root/'mimrun').mkdir(parents=True, exist_ok=True)
    save_mim(create_mim('beitv2_tiny_patch16_224', img_size=64, head_dim=codebook_size), root/'mimrun'/'mim.safetensors')
    tok = create_tokenizer('vqkd_tiny', img_size=64, codebook_size=codebook_size, code_dim=code_dim).eval()
    save_tokenizer(tok, root/'tokenizer.safetensors')
    save_pixel_decoder(PixelDecoder(code_dim=code_dim, width=4, codebook_sha=codebook_fingerprint(tok)), root/'pixel_decoder.safetensors')
    return dict(mim=root/'mimrun'/'mim.safetensors', tokenizer=root/'tokenizer.safetensors', pixel_decoder=root/'pixel_decoder.safetensors')


def inspect_notebook(root: Path, data_root: Path) -> Path:
    """`nbs/inspect_model.ipynb` with papermill's parameters injected (absolute paths: the kernel runs in the server's
    root) on the tiny models and two Imagenette images at 64 px."""
    f = tiny_models(root/'models')
    return parameterize(REPO/'nbs'/'inspect_model.ipynb', root/'inspect_model.ipynb', backbone=str(f['mim']),
                        mim_model=str(f['mim']), tokenizer=str(f['tokenizer']), pixel_decoder=str(f['pixel_decoder']),
                        data_path=str(data_root/'train'), n_images=2, img_size=64, seed=0)


# ---------------------------------------------------------------------------------------------------- the drive
def changes_only(nb: LabNotebook, view, before: dict, other, other_before: dict, what: str, timeout: float) -> dict:
    "Wait for `view` to change from `before`; `other` must still show `other_before`. The new signature of `view`."
    after = nb.wait_changed(view, before, timeout)
    assert after['imgs'] != before['imgs'] and after['pixels'] != before['pixels'], f'{what}: its view did not change'
    assert nb.content(nb.stable_signature(other)) == nb.content(other_before), f'{what} changed the other viewer'
    return after


def drive_inspect(nb: LabNotebook, run_timeout: float = 120, timeout: float = 30) -> dict:
    """Open the notebook, Run All Cells, then move the attention head and layer and the prediction viewer's patch and
    seed; each must change its own viewer's picture and leave the other's alone. Returns timings (s)."""
    t0 = time.monotonic(); times = {}
    nb.open(); times['open'] = time.monotonic() - t0
    nb.run_all(run_timeout); times['run_all'] = time.monotonic() - t0
    nb.screenshot('01_ran')
    attention, predictions = nb.widget('b2l-attn-viewer'), nb.widget('b2l-mimpred')
    aview, mview, table = nb.widget('b2l-attn-view'), nb.widget('b2l-mimpred-view'), nb.widget('b2l-mimpred-table')
    nb.screenshot('attention_before', attention); nb.screenshot('mim_predictions_before', predictions)
    a0, m0 = nb.stable_signature(aview), nb.stable_signature(mview)

    head = nb.widget('b2l-attn-head')
    assert nb.selected(head) == 'mean', nb.selected(head)
    nb.select_option(head, 'head 1')
    a1 = changes_only(nb, aview, a0, mview, m0, 'the attention head', timeout)
    assert nb.selected(head) == 'head 1'
    layer = nb.widget('b2l-attn-layer')
    last = nb.read_int(layer)
    nb.nudge_slider(layer, 'ArrowLeft')                                      # it starts at the last block
    a2 = changes_only(nb, aview, a1, mview, m0, 'the attention layer', timeout)
    assert nb.read_int(layer) == last - 1
    nb.screenshot('attention_after', attention); times['attention'] = time.monotonic() - t0

    patch = nb.widget('b2l-mimpred-patch')
    masked, table0 = nb.options(patch), table.inner_text()
    assert len(masked) >= 2 and nb.selected(patch) == masked[0], masked
    nb.select_option(patch, masked[1])
    m1 = changes_only(nb, mview, m0, aview, a2, 'the masked patch', timeout)   # the frame moves
    assert nb.selected(patch) == masked[1] and table.inner_text() != table0, 'the top-k table did not follow the patch'
    seed = nb.widget('b2l-mimpred-seed')
    s0 = nb.read_int(seed)
    nb.set_int(seed, s0 + 1)
    changes_only(nb, mview, m1, aview, a2, 'the mask seed', timeout)         # new masks
    assert nb.read_int(seed) == s0 + 1
    nb.screenshot('mim_predictions_after', predictions); nb.screenshot('02_after')
    times['predictions'] = time.monotonic() - t0
    return times


@pytest.mark.serial
def test_inspect_in_jupyterlab(lab, page):
    """nbs/inspect_model.ipynb on tiny models, run in JupyterLab + Chromium: the attention viewer's head and layer and
    the prediction viewer's patch and seed each change what their own viewer renders (and only that)."""
    from beitv2_lab.test_utils import imagenette_path
    path = inspect_notebook(lab.root, imagenette_path())
    nb = LabNotebook(page, lab, path.name, artifacts_dir(ARTIFACTS))
    try: times = drive_inspect(nb)
    except Exception:
        with contextlib.suppress(Exception): nb.screenshot('99_failure')     # the page as it was when it failed
        raise
    print('browser test timings (s):', {k: round(v, 1) for k, v in times.items()})
