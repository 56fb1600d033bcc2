"""End-to-end tests of BEiT v2 MIM pretraining: the papermill template and 2-process DDP on gloo."""

import pytest
import torch

from beitv2_lab.tokenizer import create_tokenizer, save_tokenizer
from beitv2_lab.task_mim import MIMConfig, MIMTask, load_mim
from beitv2_lab.train import load_checkpoint, read_metrics, run
from nb_utils import n_images, run_notebook

TINY = dict(model='beitv2_tiny_patch16_224', img_size=32, batch_size=4, warmup_steps=1, n_embedded=32, num_workers=0,
            progress=False, knn_images=40)


@pytest.fixture
def tokenizer(tmp_path):
    "A random tiny tokenizer file at the 32-pixel resolution of TINY (K=64)."
    torch.manual_seed(0)
    return str(save_tokenizer(create_tokenizer('vqkd_tiny', img_size=32, codebook_size=64), tmp_path/'tok.safetensors'))


def test_papermill_template(tmp_path, tokenizer):
    "The pretraining notebook runs end to end through papermill with tiny parameters and plots at the end."
    rdir = tmp_path/'run'
    cells = run_notebook('pretrain_mim', tmp_path/'out.ipynb', **TINY, tokenizer=tokenizer, steps=2, log_every=1,
                         ckpt_every=2, out_dir=str(rdir))
    assert (rdir/'backbone.safetensors').exists() and (rdir/'mim.safetensors').exists()
    assert load_mim(rdir/'mim.safetensors').head_dim == 64          # K taken from the tokenizer
    assert [r['step'] for r in read_metrics(rdir)] == [1, 2]
    assert n_images(cells) >= 2, 'expected the curves and the masks'


def test_ddp_two_processes_keep_weights_identical(tmp_path, tokenizer):
    """2 gloo workers on different data shards: at each checkpoint the run all-gathers a hash of every rank's weights
    and fails if they differ; the loss is finite and the checkpoint holds both ranks' RNG states."""
    rdir = tmp_path/'ddp'
    summary = run(MIMTask(), MIMConfig(**TINY, tokenizer=tokenizer), steps=3, log_every=1, ckpt_every=2, nproc_per_node=2, out_dir=str(rdir))
    assert summary['world_size'] == 2 and summary['weights_in_sync'] is True
    rows = read_metrics(rdir)
    assert [r['step'] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r['loss'])) and r['loss'] > 0 for r in rows)
    ckpt = rdir/'checkpoints'/'step_0000003'
    assert len(load_checkpoint(ckpt)['rng']) == 2


def test_bad_parameters_fail_before_compute(tmp_path, tokenizer):
    cfg = MIMConfig(**TINY, tokenizer=tokenizer, out_dir=str(tmp_path/'run'))
    with pytest.raises(ValueError, match='tokenizer'): run(MIMTask(), cfg, tokenizer=str(tmp_path/'missing.safetensors'))
    with pytest.raises(ValueError, match='img_size=32'): run(MIMTask(), cfg, img_size=64)
    with pytest.raises(ValueError, match='model'): run(MIMTask(), cfg, model='beitv2_huge')
    with pytest.raises(ValueError, match='data_path'): run(MIMTask(), cfg, data_path=str(tmp_path/'missing'))
    assert not (tmp_path/'run').exists()
