"""End-to-end tests of dVAE training (BEiT v1 stage 1) and of BEiT v1 MIM on a dVAE: the papermill templates,
2-process DDP on gloo, resume after a kill, and parameters refused before any compute."""
import json

import pytest
import torch

from beitv2_lab.dvae import create_dvae, load_dvae
from beitv2_lab.task_dvae import DVAEConfig, DVAETask
from beitv2_lab.train import load_checkpoint, read_metrics, run
from nb_utils import n_images, run_notebook
from kill_utils import resume_matches_uninterrupted

TINY = dict(model='dvae_tiny', img_size=32, codebook_size=64, batch_size=4, warmup_steps=1, n_embedded=64, eval_images=8,
            num_workers=0, progress=False, knn_images=40)


def test_papermill_template(tmp_path):
    "The training notebook runs end to end through papermill with tiny parameters and plots at the end."
    rdir = tmp_path/'run'
    cells = run_notebook('train_dvae', tmp_path/'out.ipynb', **TINY, steps=6, temperature_steps=6, kl_warmup_steps=3,
                         log_every=2, ckpt_every=3, out_dir=str(rdir))
    assert load_dvae(rdir/'dvae.safetensors').codebook_size == 64
    assert [r['step'] for r in read_metrics(rdir)] == [2, 4, 6]
    summary = json.loads((rdir/'summary.json').read_text())
    assert summary['eval_n_images'] == 8 and summary['eval_psnr'] > 0
    assert n_images(cells) >= 4, 'expected the curves, the reconstructions, the usage histogram and the code images'


def test_ddp_two_processes_share_usage_and_weights(tmp_path):
    """2 gloo workers on different data shards: every step's token counts are summed over both ranks (the window in
    the checkpoint holds both ranks' tokens), every logged window is checked identical across ranks, and the
    weights are checked identical at each checkpoint."""
    rdir = tmp_path/'ddp'
    summary = run(DVAETask(), DVAEConfig(**TINY), steps=4, log_every=2, ckpt_every=3, nproc_per_node=2, out_dir=str(rdir))
    assert summary['world_size'] == 2 and summary['weights_in_sync'] is True
    rows = read_metrics(rdir)
    assert [r['step'] for r in rows] == [2, 4] and all(r['usage_in_sync'] is True for r in rows)
    ckpt = load_checkpoint(rdir/'checkpoints'/'step_0000003')
    assert len(ckpt['rng']) == 2
    tokens_per_rank_step = TINY['batch_size'] * (TINY['img_size'] // 8) ** 2
    assert int(ckpt['extra']['usage'].sum()) == 2 * tokens_per_rank_step   # step 3 alone (logged at 2), both ranks


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    "A run killed (SIGKILL) after its first checkpoint, mid-window, and resumed ends bit-identical to an uninterrupted run."
    cfg = dict(TINY, steps=12, temperature_steps=12, kl_warmup_steps=6, ckpt_every=4, log_every=3)
    resume_matches_uninterrupted('beitv2_lab.task_dvae:DVAETask', 'beitv2_lab.task_dvae:DVAEConfig', cfg, tmp_path, 4,
                                 ('dvae.safetensors',))


def test_bad_parameters_fail_before_compute(tmp_path):
    cfg = DVAEConfig(**TINY, out_dir=str(tmp_path/'run'))
    with pytest.raises(ValueError, match='model'): run(DVAETask(), cfg, model='dvae_huge')
    with pytest.raises(ValueError, match='img_size'): run(DVAETask(), cfg, img_size=36)
    with pytest.raises(ValueError, match='recon'): run(DVAETask(), cfg, recon='l1')
    with pytest.raises(ValueError, match='temperature_end'): run(DVAETask(), cfg, temperature_end=0.)
    with pytest.raises(ValueError, match='data_path'): run(DVAETask(), cfg, data_path=str(tmp_path/'missing'))
    with pytest.raises(ValueError, match='lr'): run(DVAETask(), cfg, lr=-1.0)
    assert not (tmp_path/'run').exists()


def test_beit_v1_mim_on_a_dvae(tmp_path):
    """BEiT v1 = MIM with a dVAE tokenizer: pretrain_mim.ipynb with a dVAE file, v1 masks, no patch aggregation and
    drop path 0.1; the backbone view is twice the dVAE's resolution (8x codes on a 16-px patch grid)."""
    from beitv2_lab.task_mim import MIMConfig, MIMTask, load_mim
    torch.manual_seed(0)
    tok = create_dvae('dvae_tiny', img_size=16, codebook_size=64).save(tmp_path/'dvae.safetensors')   # a 2x2 code grid
    out_nb, rdir = tmp_path/'out.ipynb', tmp_path/'mim'
    params = dict(tokenizer=str(tok), mask_mode='v1', patch_aggregation=False, drop_path_rate=0.1, img_size=32, steps=2,
                  batch_size=4, warmup_steps=1, n_embedded=32, num_workers=0, log_every=1, ckpt_every=2, progress=False,
                  out_dir=str(rdir))
    cells = run_notebook('pretrain_mim', out_nb, **params)
    mim = load_mim(rdir/'mim.safetensors')
    assert mim.head_dim == 64 and mim.config['patch_aggregation'] is False   # K from the dVAE, BEiT v1's head
    rows = read_metrics(rdir)
    assert [r['step'] for r in rows] == [1, 2] and all(0 <= r['acc_main'] <= 1 for r in rows)
    assert 'loss_agg' not in rows[-1]
    assert (rdir/'backbone.safetensors').exists() and n_images(cells) >= 2
    with pytest.raises(ValueError, match='set img_size=32'):             # 4x the dVAE's resolution: grids differ
        run(MIMTask(), MIMConfig(**{k: v for k, v in params.items() if k != 'img_size'}, img_size=16 * 4))
