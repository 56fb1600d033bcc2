"""End-to-end tests of iBOT pretraining: the papermill template, 2-process DDP on gloo (teacher and centres identical on
every rank), resume after a kill, bad parameters, and the online tokenizer file in the gallery and the code probe."""
import os

# OpenMP threads that sleep rather than spin while they wait (set before torch starts its thread pool; inherited by the
# spawned workers): on a busy 2-core host the loop's 2 threads plus data workers otherwise slow each other down
# several times over. The wait policy changes no result.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import pytest
import torch
from safetensors.torch import load_file

from beitv2_lab.task_ibot import IBOTConfig, IBOTTask
from beitv2_lab.train import read_metrics, run
from nb_utils import n_images, run_notebook
from kill_utils import resume_matches_uninterrupted

TINY = dict(global_size=32, local_size=16, n_local=2, out_dim=64, hidden_dim=64, bottleneck_dim=16, batch_size=4, warmup_steps=1,
            teacher_temp_warmup_steps=2, freeze_last_layer=1, n_embedded=64, num_workers=0, progress=False, knn_images=40)


def same_files(a, b) -> bool:
    a, b = load_file(str(a)), load_file(str(b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def strip_speed(rows): return [{k: v for k, v in r.items() if k != 'img_per_s'} for r in rows]


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    "A tiny finished run (6 steps): its out_dir."
    out = tmp_path_factory.mktemp('ibot_run')
    run(IBOTTask(), IBOTConfig(**TINY), steps=6, log_every=3, ckpt_every=6, out_dir=str(out))
    return out


def test_papermill_template(tmp_path):
    "The pretraining notebook runs end to end through papermill with tiny parameters and plots at the end."
    rdir = tmp_path/'run'
    cells = run_notebook('pretrain_ibot', tmp_path/'out.ipynb', **TINY, steps=2, log_every=1, ckpt_every=2, out_dir=str(rdir))
    assert {'ibot.safetensors', 'backbone.safetensors', 'tokenizer.safetensors'} <= {p.name for p in rdir.iterdir()}
    assert [r['step'] for r in read_metrics(rdir)] == [1, 2]
    assert n_images(cells) >= 4, 'expected the loss curves, two panels of collapse monitors and the crops with masks'


class DivergingCentre(IBOTTask):
    "iBOT with rank 1's patch centre nudged after step 1: the window check at step 2 must catch it."
    def after_step(self, built, step):
        super().after_step(built, step)
        if step == 1 and torch.distributed.get_rank() == 1: built.model.loss.patch_center.add_(1e-3)


def test_ddp_two_processes_keep_teacher_identical(tmp_path):
    """2 gloo workers on different data shards: at every log step each rank hashes its teacher and both centres and
    the run fails unless all ranks agree; at the checkpoint all weights agree too. A nudged centre on one rank fails."""
    rdir = tmp_path/'ddp'
    summary = run(IBOTTask(), IBOTConfig(**TINY), steps=3, log_every=1, ckpt_every=3, nproc_per_node=2, out_dir=str(rdir))
    rows = read_metrics(rdir)
    assert [r['step'] for r in rows] == [1, 2, 3]
    assert all(r['teacher_in_sync'] is True for r in rows)
    assert summary['world_size'] == 2 and summary['weights_in_sync'] is True
    assert all(torch.isfinite(torch.tensor(r['loss'])) and r['patch_utilisation'] > 0 for r in rows)
    with pytest.raises(RuntimeError, match='teacher or centres diverged across ranks'):
        run(DivergingCentre(), IBOTConfig(**TINY), steps=3, log_every=1, ckpt_every=3, nproc_per_node=2, out_dir=str(tmp_path/'bad'))


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    """A run killed (SIGKILL) after its first checkpoint and resumed ends bit-identical to an uninterrupted run. The
    killed run loads with 2 worker processes, the reference with none: crops and masks depend only on the item seeds."""
    cfg = dict(TINY, steps=10, ckpt_every=2, log_every=2, freeze_last_layer=3)
    resume_matches_uninterrupted('beitv2_lab.task_ibot:IBOTTask', 'beitv2_lab.task_ibot:IBOTConfig', cfg, tmp_path, 2,
                                 ('tokenizer.safetensors', 'ibot.safetensors', 'backbone.safetensors'),
                                 killed_cfg=dict(cfg, num_workers=2))


def test_bad_parameters_fail_before_compute(tmp_path):
    cfg = IBOTConfig(**TINY, out_dir=str(tmp_path/'run'))
    for kw, msg in [(dict(model='ibot_vit_huge'), 'model'), (dict(global_size=40), 'global_size'), (dict(local_size=8), 'local_size'),
                    (dict(n_global=1, n_local=0), 'n_local'), (dict(mask_ratio_min=0.7), 'mask_ratio_min'),
                    (dict(patch_out_dim=32), 'patch_out_dim'), (dict(momentum_teacher=1.1), 'momentum_teacher'),
                    (dict(data_path=str(tmp_path/'missing')), 'data_path'), (dict(lr=-1.), 'lr')]:
        with pytest.raises(ValueError, match=msg): run(IBOTTask(), cfg, **kw)
    assert not (tmp_path/'run').exists()


def test_tokenizer_file_in_gallery_and_code_probe(trained):
    "The run's online tokenizer (kind 'ibot') goes through the generic loader into the code gallery and the code probe."
    from beitv2_lab.data import EmbeddedPhotos, EvalTransform
    from beitv2_lab.evaluate import code_histogram_probe
    from beitv2_lab.gallery import build_gallery
    from beitv2_lab.tokenizer import load_any_tokenizer
    tok = load_any_tokenizer(trained/'tokenizer.safetensors')
    assert (tok.kind, tok.codebook_size, tuple(tok.grid), tuple(tok.img_size)) == ('ibot', 64, (2, 2), (32, 32))
    tf = EvalTransform(32, resize=32, mean=None)                      # [0, 1] pixels: the tokenizer normalises itself
    ds = EmbeddedPhotos(20, size=48, transform=tf)
    gal = build_gallery(tok, ds, top_k=2, context=2, batch_size=8, num_workers=0, progress=False)
    assert gal.usage.sum().item() == 20 * 4 and gal.codebook.shape == (64, 16)
    ids = torch.cat([tok.encode(torch.stack([ds[i]['image'] for i in range(j, j + 10)])) for j in (0, 10)])
    assert torch.equal(gal.usage, torch.bincount(ids.flatten(), minlength=64))
    r = code_histogram_probe(tok, ds, EmbeddedPhotos(10, size=48, transform=tf, seed=1), batch_size=10, lrs=(1e-2,), epochs=3,
                             val_fraction=0.2)
    assert r['tokens_per_image'] == 4 and 0 <= r['top1'] <= 100 and 0 < r['codebook_usage'] <= 1, r
