"""No training step of any task makes the host wait for a GPU, after the run's first step (which checks its batch's
values): `core.HostSyncs` watches every torch call of the step on this CPU, so the test holds for a GPU run too. The one
exception: masks that hold a different number of patches per image. iBOT's student selects the masked rows by
boolean indexing, sized by the mask (1 per step; its loss then knows that number and gathers); MIM on BEiT v1's
"at most" masks reads the number of masked rows once (1 per step)."""
import pytest
import torch

from beitv2_lab import train
from beitv2_lab.core import HostSyncs
from beitv2_lab.task_dvae import DVAEConfig, DVAETask
from beitv2_lab.task_ibot import IBOTConfig, IBOTTask
from beitv2_lab.task_mim import MIMConfig, MIMTask
from beitv2_lab.task_pixdec import PixDecConfig, PixDecTask
from beitv2_lab.task_vqkd import VQKDConfig, VQKDTask
from beitv2_lab.tokenizer import create_tokenizer, save_tokenizer

RUN = dict(num_workers=0, progress=False, steps=3, log_every=3, ckpt_every=3, warmup_steps=1, knn_images=40)
MIM = dict(model='beitv2_tiny_patch16_224', img_size=32, batch_size=4, n_embedded=16)
TASKS = {
    'vqkd': lambda tok: (VQKDTask(), VQKDConfig(teacher='hog', model='vqkd_tiny', img_size=32, teacher_size=32, codebook_size=64,
                                                code_dim=8, batch_size=8, n_embedded=16)),
    'mim-tokens': lambda tok: (MIMTask(), MIMConfig(**MIM, tokenizer=tok)),
    'mim-pixels': lambda tok: (MIMTask(), MIMConfig(**MIM, target='pixels')),
    'mim-v1-masks': lambda tok: (MIMTask(), MIMConfig(**MIM, tokenizer=tok, mask_mode='v1')),
    'dvae': lambda tok: (DVAETask(), DVAEConfig(model='dvae_tiny', img_size=32, codebook_size=64, batch_size=4, n_embedded=16,
                                                eval_images=4)),
    'ibot': lambda tok: (IBOTTask(), IBOTConfig(global_size=32, local_size=16, n_local=2, out_dim=64, hidden_dim=64,
                                                bottleneck_dim=16, batch_size=4, teacher_temp_warmup_steps=2,
                                                freeze_last_layer=1, n_embedded=16)),
    'pixdec': lambda tok: (PixDecTask(), PixDecConfig(tokenizer=tok, width=4, batch_size=4, n_embedded=16, eval_images=0)),
}
ALLOWED = {'ibot': {'getitem[bool mask]': 1},           # per-image mask counts: the masked rows' number is data
           'mim-v1-masks': {'__int__': 1}}              # v1 masks hold "at most" the count: M is read once


@pytest.mark.parametrize('name', list(TASKS))
def test_steps_after_the_first_make_no_host_sync(name, tmp_path, monkeypatch):
    torch.manual_seed(0)
    tok = str(save_tokenizer(create_tokenizer('vqkd_tiny', img_size=32, codebook_size=64), tmp_path/'tok.safetensors'))
    task, cfg = TASKS[name](tok)
    seen, step_fn = [], train._train_step
    def watched(*args):
        with HostSyncs() as syncs: out = step_fn(*args)
        seen.append(syncs)
        return out
    monkeypatch.setattr(train, '_train_step', watched)
    train.run(task, cfg, **RUN, out_dir=str(tmp_path/'run'))
    assert len(seen) == 3
    if name in ('vqkd', 'mim-tokens'): assert seen[0].total > 0, 'the first step checks its values'
    for syncs in seen[1:]:
        kinds = {}
        for (kind, where), n in syncs.calls.items(): kinds[kind] = kinds.get(kind, 0) + n
        assert kinds == ALLOWED.get(name, {}), syncs
