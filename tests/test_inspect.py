"""`nbs/inspect_model.ipynb` through papermill on tiny models: a MIM model's attention beside an iBOT student's and
its predictions against a dVAE tokenizer (drawn by the decoder); against a VQ-KD tokenizer, drawn by a pixel decoder;
an iBOT teacher beside its random-init twin; a MIM model without its tokenizer, or a pixel decoder for a dVAE, refused
before anything is computed."""
import base64
import io

import pytest
import torch
from PIL import Image

from nb_utils import n_images, run_notebook


def stdout(cells: list[dict]) -> str:
    "What the cells printed."
    return ''.join(''.join(o.get('text', '')) for c in cells for o in c.get('outputs', []) if o.get('output_type') == 'stream')


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    """A tiny MIM model (64 px, 4x4 patches, K=64), the dVAE it predicts (32 px, 4x4 codes), a VQ-KD tokenizer of K=64
    (64 px, 4x4 codes) with a pixel decoder for it, a tiny iBOT run's model file."""
    from beitv2_lab.dvae import create_dvae
    from beitv2_lab.mim import create_mim
    from beitv2_lab.task_mim import save_mim
    from beitv2_lab.task_pixdec import PixelDecoder, codebook_fingerprint, save_pixel_decoder
    from beitv2_lab.test_utils import tiny_run
    from beitv2_lab.tokenizer import create_tokenizer, save_tokenizer
    root = tmp_path_factory.mktemp('inspect')
    torch.manual_seed(0)
    (root/'mimrun').mkdir()
    save_mim(create_mim('beitv2_tiny_patch16_224', img_size=64, head_dim=64), root/'mimrun'/'mim.safetensors')
    create_dvae('dvae_tiny', img_size=32, codebook_size=64).save(root/'dvae.safetensors')
    vqkd = create_tokenizer('vqkd_tiny', img_size=64, codebook_size=64, code_dim=8).eval()
    save_tokenizer(vqkd, root/'vqkd.safetensors')
    save_pixel_decoder(PixelDecoder(code_dim=8, width=4, codebook_sha=codebook_fingerprint(vqkd)), root/'pixel_decoder.safetensors')
    ibot = tiny_run('ibot', root/'ibotrun').parent/'ibot.safetensors'
    return dict(mim=str(root/'mimrun'/'mim.safetensors'), dvae=str(root/'dvae.safetensors'), vqkd=str(root/'vqkd.safetensors'),
                pixdec=str(root/'pixel_decoder.safetensors'), ibot=str(ibot))


def png_widths(cells: list[dict]) -> list[int]:
    "The width (px) of every PNG output, in order."
    return [Image.open(io.BytesIO(base64.b64decode(o['data']['image/png']))).size[0]
            for c in cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]


def test_inspect_template(files, tmp_path):
    from beitv2_lab.test_utils import imagenette_path
    cells = run_notebook('inspect_model', tmp_path/'out.ipynb', backbone=files['mim'], second_backbone=f"ibot_student:{files['ibot']}",
                         mim_model=files['mim'], tokenizer=files['dvae'], data_path=str(imagenette_path()/'train'), n_images=2, img_size=64)
    text = stdout(cells)
    assert 'backbones: mimrun, ibotrun student; MIM model' in text and 'dvae tokenizer' in text, text
    for name in ('mimrun', 'ibotrun student'): assert f"{name}, last block, mean of heads, on 'tench'" in text, text
    assert 'masked-token accuracy: tench ' in text and ', parachute ' in text, text
    assert n_images(cells) == 2                                                   # the attention and the prediction pictures


def test_inspect_template_vqkd_pixel_decoder(files, tmp_path):
    "A VQ-KD tokenizer's codes drawn by its pixel decoder: the prediction picture holds four panels (two decodes), not two."
    cells = run_notebook('inspect_model', tmp_path/'out.ipynb', backbone=files['mim'], mim_model=files['mim'], tokenizer=files['vqkd'],
                         pixel_decoder=files['pixdec'], n_images=1, img_size=64)
    text = stdout(cells)
    assert f"vqkd tokenizer, drawn by the pixel decoder {files['pixdec']}" in text and 'masked-token accuracy: astronaut ' in text, text
    attention, predictions = png_widths(cells)
    assert predictions > 700, predictions                                        # 4 panels of 2.6 in at 72 dpi (2 panels: 374 px)


def test_inspect_template_random_twin(files, tmp_path):
    "With no second backbone, the first one's architecture at random init stands beside it; no MIM model, no predictions."
    cells = run_notebook('inspect_model', tmp_path/'out.ipynb', backbone=files['ibot'], n_images=1, img_size=32)
    text = stdout(cells)
    assert 'backbones: ibotrun teacher, random init' in text and "random init, last block, mean of heads, on 'astronaut'" in text, text
    assert 'no mim_model given' in text and n_images(cells) == 1, text


@pytest.mark.parametrize('case, match', [('half_pair', 'mim_model and tokenizer go together'),
                                         ('dvae_pixdec', 'pixel_decoder: a pixel decoder draws VQ-KD codes, got a dvae tokenizer')])
def test_inspect_template_refuses_bad_parameters(files, tmp_path, case, match):
    "A MIM model without its tokenizer, or a pixel decoder given with a dVAE tokenizer, is refused by name before any compute."
    from papermill import PapermillExecutionError
    params = dict(half_pair=dict(mim_model=files['mim']),
                  dvae_pixdec=dict(mim_model=files['mim'], tokenizer=files['dvae'], pixel_decoder=files['pixdec']))[case]
    with pytest.raises(PapermillExecutionError, match=match) as e:
        run_notebook('inspect_model', tmp_path/'out.ipynb', backbone=files['mim'], img_size=64, n_images=1, **params)
    assert 'first = load_backbone(' in e.value.source                             # raised in the loading cell, before any view
