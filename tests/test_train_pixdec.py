"""End-to-end tests of the VQ-KD pixel decoder (`beitv2_lab.task_pixdec`) on a tiny trained VQ-KD tokenizer: the
papermill template, resume after a kill, no host sync in a step after the first, and parameters refused before any
compute."""
import json

import pytest

from beitv2_lab.dvae import create_dvae
from beitv2_lab.task_pixdec import PixDecConfig, PixDecTask, load_pixel_decoder
from beitv2_lab.test_utils import tiny_run
from beitv2_lab.train import read_metrics, run
from nb_utils import n_images, run_notebook
from kill_utils import resume_matches_uninterrupted

TINY = dict(width=4, batch_size=4, warmup_steps=1, n_embedded=32, eval_images=6, num_workers=0, progress=False)


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory) -> str:
    "A tiny trained VQ-KD tokenizer file (32 px: a 2x2 grid of 16-px patches, K = 64, C = 8), about 2 s."
    return str(tiny_run('vqkd', tmp_path_factory.mktemp('vqkd')))


def test_papermill_template(tokenizer, tmp_path):
    "The run notebook trains, prints the held-out PSNR against the per-patch-mean baseline, and plots at the end."
    rdir = tmp_path/'run'
    cells = run_notebook('train_pixdec', tmp_path/'out.ipynb', **TINY, tokenizer=tokenizer, steps=4, log_every=2, ckpt_every=2,
                         out_dir=str(rdir))
    decoder = load_pixel_decoder(rdir/'pixel_decoder.safetensors')
    assert decoder.config['tokenizer'] == tokenizer and decoder.code_dim == 8 and decoder.patch_size == 16
    assert [r['step'] for r in read_metrics(rdir)] == [2, 4]
    summary = json.loads((rdir/'summary.json').read_text())
    assert summary['eval_n_images'] == 6 and summary['eval_psnr'] > 0 and summary['eval_patch_mean_psnr'] > 0
    printed = ''.join(''.join(o.get('text', '')) for c in cells for o in c.get('outputs', []))
    assert f"decoder {summary['eval_psnr']:.2f} dB, per-patch mean {summary['eval_patch_mean_psnr']:.2f} dB" in printed
    assert n_images(cells) >= 2, 'expected the PSNR curves and the grid of images, decodes and per-patch means'


def test_resume_after_kill_matches_uninterrupted(tokenizer, tmp_path):
    "A run killed (SIGKILL) after its first checkpoint and resumed ends bit-identical to an uninterrupted run."
    cfg = dict(TINY, tokenizer=tokenizer, steps=24, ckpt_every=4, log_every=3)
    full, cut = resume_matches_uninterrupted('beitv2_lab.task_pixdec:PixDecTask', 'beitv2_lab.task_pixdec:PixDecConfig', cfg, tmp_path,
                                             4, ('pixel_decoder.safetensors',))
    s_full, s_cut = (json.loads((d/'summary.json').read_text()) for d in (full, cut))
    assert (s_full["eval_psnr"], s_full["eval_patch_mean_psnr"]) == (s_cut["eval_psnr"], s_cut["eval_patch_mean_psnr"])


def test_bad_parameters_fail_before_compute(tokenizer, tmp_path):
    cfg = PixDecConfig(**TINY, tokenizer=tokenizer, out_dir=str(tmp_path/'run'))
    dvae = str(create_dvae('dvae_tiny', img_size=32, codebook_size=16).save(tmp_path/'dvae.safetensors'))
    with pytest.raises(ValueError, match='tokenizer: file not found'): run(PixDecTask(), cfg, tokenizer=str(tmp_path/'missing.safetensors'))
    with pytest.raises(ValueError, match='a dVAE has its own decoder'): run(PixDecTask(), cfg, tokenizer=dvae)
    with pytest.raises(ValueError, match='width: must be a positive multiple of 4'): run(PixDecTask(), cfg, width=6)
    with pytest.raises(ValueError, match="loss: must be 'l1' or 'mse'"): run(PixDecTask(), cfg, loss='l2')
    with pytest.raises(ValueError, match='data_path'): run(PixDecTask(), cfg, data_path=str(tmp_path/'missing'))
    assert not (tmp_path/'run').exists()
