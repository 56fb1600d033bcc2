"""The online k-NN of every pretraining run: `knn_top1` at the k-NN steps of a tiny MIM and a tiny iBOT run, and the
weights of a run bit-identical with the k-NN on and off (it draws nothing from the training RNGs)."""

import pytest
import torch
from safetensors.torch import load_file

from beitv2_lab.task_ibot import IBOTConfig, IBOTTask
from beitv2_lab.task_mim import MIMConfig, MIMTask
from beitv2_lab.tokenizer import create_tokenizer, save_tokenizer
from beitv2_lab.train import read_metrics, run

COMMON = dict(batch_size=4, warmup_steps=1, n_embedded=32, num_workers=0, progress=False, steps=4, log_every=1, ckpt_every=4,
              knn_images=40, knn_k=5)
MIM = dict(model='beitv2_tiny_patch16_224', img_size=32, drop_path_rate=0.1)      # drop path: the train RNG is in use
IBOT = dict(model='ibot_vit_tiny_d6_patch16_224', global_size=32, local_size=16, n_local=2, out_dim=64, hidden_dim=64,
            bottleneck_dim=16, teacher_temp_warmup_steps=2, freeze_last_layer=1, drop_path_rate=0.1)


@pytest.fixture(scope='module')
def tokenizer(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp('tok')/'tok.safetensors'
    return str(save_tokenizer(create_tokenizer('vqkd_tiny', img_size=32, codebook_size=64), path))


def _weights(rdir):
    return load_file(str(rdir/'checkpoints'/'step_0000004'/'model.safetensors'))


@pytest.mark.parametrize('method', ['mim', 'ibot'])
def test_knn_logged_and_training_unchanged(tmp_path, tokenizer, method):
    task, cfg = (MIMTask(), MIMConfig(**COMMON, **MIM, tokenizer=tokenizer)) if method == 'mim' else (IBOTTask(), IBOTConfig(**COMMON, **IBOT))
    on, off = tmp_path/'on', tmp_path/'off'
    run(task, cfg, knn_every=2, out_dir=str(on))
    run(task, cfg, knn_every=0, out_dir=str(off))
    rows = read_metrics(on)
    assert [r['step'] for r in rows if 'knn_top1' in r] == [2, 4]                  # in the log rows of the k-NN steps
    assert all(0 <= r['knn_top1'] <= 100 and 'loss' in r for r in rows if 'knn_top1' in r)
    assert not any('knn_top1' in r for r in read_metrics(off))
    a, b = _weights(on), _weights(off)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), 'the k-NN changed training'


def test_knn_on_the_log_steps_that_reach_it(tmp_path, tokenizer):
    "knn_every need not divide log_every: the first log step at or after each multiple scores it, and the last step."
    cfg = MIMConfig(**{**COMMON, 'log_every': 3, 'steps': 7, 'ckpt_every': 7}, **MIM, tokenizer=tokenizer)
    run(MIMTask(), cfg, knn_every=2, out_dir=str(tmp_path/'r'))
    assert [r['step'] for r in read_metrics(tmp_path/'r') if 'knn_top1' in r] == [3, 6, 7]


def test_bad_knn_parameters_fail_before_compute(tmp_path, tokenizer):
    with pytest.raises(ValueError, match='knn_every: must be >= 0'):
        run(MIMTask(), MIMConfig(**COMMON, **MIM, tokenizer=tokenizer), knn_every=-1, out_dir=str(tmp_path/'r'))
    assert not (tmp_path/'r').exists()
