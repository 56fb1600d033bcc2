"""Training from WebDataset tar shards through the harness: masks drawn per item, exact resume after SIGKILL, clear errors."""
import pytest
import torch
from kill_utils import kill_after_checkpoint

from beitv2_lab.data import ImageFolder
from beitv2_lab.shards import write_shards
from beitv2_lab.task_mim import MIMConfig, MIMTask
from beitv2_lab.test_utils import imagenette_path
from beitv2_lab.train import build_dataset, run


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp('shards')/'imagenette'
    write_shards(ImageFolder(imagenette_path()/'train').split('holdout', holdout=0.01), out, max_count_per_shard=12)
    return out


def test_mim_from_shards_resumes_exactly(shards, tmp_path):
    "MIM (pixel target, masks from each item's seed) trained from shards; killed after step 3 and resumed = uninterrupted."
    cfg = dict(data_path=str(shards/'index.json'), target='pixels', img_size=32, batch_size=4, steps=24, warmup_steps=2,
               ckpt_every=3, log_every=3, num_workers=2, progress=False, device='cpu')
    ref = run(MIMTask(), MIMConfig(**cfg, out_dir=str(tmp_path/'ref')))
    kill_after_checkpoint('beitv2_lab.task_mim:MIMTask', 'beitv2_lab.task_mim:MIMConfig', cfg, tmp_path/'cut', 3, 'mim.safetensors')
    again = run(MIMTask(), MIMConfig(**cfg, out_dir=str(tmp_path/'cut')))
    assert again['loss'] == ref['loss'] and again['skipped'] == ref['skipped'] == 0
    from safetensors.torch import load_file
    a, b = load_file(tmp_path/'ref'/'mim.safetensors'), load_file(tmp_path/'cut'/'mim.safetensors')
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_shard_config_errors(shards):
    with pytest.raises(ValueError, match="split: shards hold one part already"):
        build_dataset(MIMConfig(data_path=str(shards), split='train'), None)
    with pytest.raises(ValueError, match='shard_urls: needs data_path to be a shard index'):
        build_dataset(MIMConfig(data_path=str(imagenette_path()/'train'), shard_urls='pipe:cat x-{0..3}.tar'), None)
    import torchvision.transforms as T
    from beitv2_lab.train import make_loader
    n = len(list(shards.glob('*.tar')))
    tf, cfg = T.Compose([T.CenterCrop(32), T.ToTensor()]), dict(batch_size=4, num_workers=0)
    local = build_dataset(MIMConfig(data_path=str(shards), **cfg), tf)
    piped = build_dataset(MIMConfig(data_path=str(shards), shard_urls=f'pipe:cat {shards}/shard-{{000000..{n - 1:06d}}}.tar', **cfg), tf)
    assert len(piped.urls) == n and piped.urls[0].startswith('pipe:cat ')
    a, b = (next(iter(make_loader(s, MIMConfig(**cfg), 8, torch.device('cpu')))) for s in (local, piped))   # from position 8 on
    assert torch.equal(a['image'], b['image']) and a['index'].tolist() == b['index'].tolist()


def test_sample_items_from_shards_and_folders(shards):
    "What the run notebooks show (`sample_items`) works on shards as on folders: items with their masks."
    from beitv2_lab.task_mim import mim_dataset
    from beitv2_lab.train import sample_items
    for path in (shards, imagenette_path()/'train'):
        items = sample_items(mim_dataset(MIMConfig(data_path=str(path), target='pixels', img_size=32)), 3)
        assert len(items) == 3 and all(it['bool_masked_pos'].shape == (4,) and it['image'].shape == (3, 32, 32) for it in items)
