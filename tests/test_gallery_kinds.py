"""`nbs/codebook_gallery.ipynb` through papermill on every tokenizer kind: the tokenizer files of tiny real training runs
of VQ-KD, a dVAE and iBOT (`test_utils.tiny_run`). Each run of the notebook must reach its end, draw its pictures, and
its dashboards must say what does not apply to the kind (read from the widget state papermill saves)."""
import os

os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')   # idle OpenMP threads sleep: the three kernels share 2 cores

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from beitv2_lab.gallery import CodeGallery
from beitv2_lab.test_utils import tiny_run
from nb_utils import n_images, run_notebook

KINDS = ('vqkd', 'dvae', 'ibot')
GALLERY = dict(n_embedded=16, top_k=2, context=2, n_codes=16, sheet_codes=8, batch_size=8, num_workers=0, code_map='pca')
SAYS = {   # kind -> what its dashboards must say, and what they must not
    'vqkd': (['VQ-KD run', 'VQ-KD tokenizer: patches ranked by the cosine of the patch to its code',
              'cannot be drawn alone'], ['never restarts codes', 'keeps no running count']),
    'dvae': (['dVAE run', 'a dVAE never restarts codes', 'a dVAE keeps no running count per code',
              'drawn alone by the decoder: <img class="b2l-drawn"'], ['cannot be drawn alone']),
    'ibot': (['iBOT run', 'iBOT never restarts codes', 'keep no running count',
              'iBOT has no pixel decoder: a prototype cannot be drawn alone'], ['drawn alone by the decoder:']),
}


def widget_text(nb_path: Path) -> str:
    "The text values of every widget in the executed notebook's saved widget state (the dashboards' info lines)."
    meta = json.loads(nb_path.read_text())['metadata']
    state = meta.get('widgets', {}).get('application/vnd.jupyter.widget-state+json', {}).get('state', {})
    return '\n'.join(m['state']['value'] for m in state.values() if isinstance(m['state'].get('value'), str))


def stdout(cells: list[dict]) -> str:
    return ''.join(''.join(o.get('text', '')) for c in cells for o in c.get('outputs', []) if o.get('name') == 'stdout')


@pytest.fixture(scope='module')
def executed(tmp_path_factory) -> dict:
    "kind -> (output folder, executed code cells): the three notebooks run at once (each kernel waits on I/O part of the time)."
    root = tmp_path_factory.mktemp('gallery_kinds')
    toks = {k: tiny_run(k, root/k/'run') for k in KINDS}
    def one(kind):
        out = root/kind
        return out, run_notebook('codebook_gallery', out/'out.ipynb', tokenizer=str(toks[kind]), out_dir=str(out/'gallery'), **GALLERY)
    with ThreadPoolExecutor(len(KINDS)) as pool: return dict(zip(KINDS, pool.map(one, KINDS)))


@pytest.mark.parametrize('kind', KINDS)
def test_gallery_notebook_on_each_kind(executed, kind):
    "The gallery of the kind's tokenizer is written and shown; every dashboard renders and says what applies to the kind."
    out, cells = executed[kind]
    gal = CodeGallery.load(out/'gallery'/'gallery.safetensors')
    assert gal.kind == kind and gal.codebook_size == 64 and gal.usage.sum() > 0
    assert (out/'gallery'/'gallery.html').stat().st_size > 0 and (out/'gallery'/'contact_sheet_000.png').is_file()
    assert f'{kind} tokenizer, 16 images' in stdout(cells)
    assert n_images(cells) >= 1, 'expected the contact sheet'
    assert not [o for c in cells for o in c.get('outputs', []) if o.get('output_type') == 'error']
    text = widget_text(out/'out.ipynb')
    must, must_not = SAYS[kind]
    assert all(s in text for s in must), [s for s in must if s not in text]
    assert not any(s in text for s in must_not), [s for s in must_not if s in text]
    if kind != 'vqkd': assert text.count('does not apply') >= 2   # restarts and the EMA count per code, in the info line
