"""The decoded image cache (`data.build_image_cache`, `data.CachedImageFolder`) and the harness's `cache` field: exact
pixels, the same split, stale and damaged caches refused, atomic builds, every task's transform on cached items, a
short run."""

import logging
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from beitv2_lab import data
from beitv2_lab.data import CachedImageFolder, ImageFolder, Skipped, build_image_cache, check_image_cache, load_image
from beitv2_lab.test_utils import TINY_RUNS, imagenette_path
from beitv2_lab.train import Seeded, build_dataset, read_metrics, run


def _copy_imagenette(dest, every: int = 1500):
    "A handful of Imagenette JPEGs (every `every`-th file, class folders kept) copied under `dest`: tests may modify them."
    for f in ImageFolder(imagenette_path()/'train').files[::every]:
        (dest/f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, dest/f.parent.name/f.name)
    return dest


@pytest.fixture
def folder(tmp_path):
    "7 Imagenette JPEGs in 6 class folders, plus one unreadable file."
    src = _copy_imagenette(tmp_path/'src')
    (src/'n01440764'/'broken.JPEG').write_bytes(b'\xff\xd8 truncated')
    return src


def test_exact_pixels_same_split_and_skips_counted(folder, tmp_path, caplog):
    "Each row is the file's decoded centre square, bit for bit; the split and labels are the folder's; the broken file is counted."
    with caplog.at_level(logging.WARNING, 'beitv2_lab.data'):
        m = build_image_cache(folder, tmp_path/'cache', size=224, progress=False)
    assert m['skipped'].keys() == {'n01440764/broken.JPEG'} and 'skipped 1 unreadable image(s) of 8' in caplog.text
    cf, files = CachedImageFolder(tmp_path/'cache', root=folder, size=224), ImageFolder(folder)
    readable = [i for i in range(len(files)) if not isinstance(files[i], Skipped)]
    assert len(cf) == len(readable) == 7 and cf.classes == files.classes
    assert cf.rel_paths() == [files.rel_paths()[i] for i in readable] and cf.labels == [files.labels[i] for i in readable]
    for i in range(len(cf)):
        want = np.asarray(TF.center_crop(load_image(cf.files[i]), 224))
        assert np.array_equal(np.asarray(cf[i]['image']), want), cf.rel_paths()[i]
    for salt in ('', 'x'):
        for part in ('train', 'holdout'):
            kept = set(cf.rel_paths())
            assert cf.split(part, 0.4, salt).rel_paths() == [r for r in files.split(part, 0.4, salt).rel_paths() if r in kept]
            sub = cf.split(part, 0.4, salt)
            for j in range(len(sub)):
                assert np.array_equal(np.asarray(sub[j]['image']), np.asarray(cf[cf.rel_paths().index(sub.rel_paths()[j])]['image']))


def test_smaller_size_follows_the_decode_rule(folder, tmp_path):
    "Below the native short side: the shorter side resized (bicubic, from the reduced-scale JPEG decode), then the centre."
    build_image_cache(folder, tmp_path/'c80', size=80, progress=False)
    cf = CachedImageFolder(tmp_path/'c80')
    for i in range(len(cf)):
        img = load_image(cf.files[i], target_size=80)
        w, h = img.size
        resized = img.resize((int(80 * w / h), 80) if w >= h else (80, int(80 * h / w)), Image.BICUBIC)   # torchvision's rounding
        assert np.array_equal(np.asarray(cf[i]['image']), np.asarray(TF.center_crop(resized, 80))), cf.rel_paths()[i]


def test_stale_caches_are_refused_with_cause_and_fix(folder, tmp_path):
    build_image_cache(folder, tmp_path/'cache', size=64, progress=False)
    fix = f"rebuild it: build_image_cache({str(folder.resolve())!r}, {str(tmp_path/'cache')!r}, size=64)"
    f = sorted(folder.rglob('*.JPEG'))[1]
    rel, st = f.relative_to(folder).as_posix(), f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))                        # touched
    with pytest.raises(ValueError, match=f'is stale: 1 file\\(s\\) changed \\({rel}: modified ') as e: CachedImageFolder(tmp_path/'cache')
    assert fix in str(e.value)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns)); CachedImageFolder(tmp_path/'cache')   # undone: fresh again
    f.write_bytes(f.read_bytes() + b'\0'); os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new size
    with pytest.raises(ValueError, match=f'{rel}: {st.st_size} -> {st.st_size + 1} bytes'): check_image_cache(tmp_path/'cache')
    (folder/'n01440764'/'broken.JPEG').unlink()                                             # removed (even an unreadable one)
    with pytest.raises(ValueError, match=r'1 file\(s\) removed \(n01440764/broken.JPEG\)'): check_image_cache(tmp_path/'cache')
    (folder/'n02102040'/'new.png').write_bytes(b'')                                         # added
    with pytest.raises(ValueError, match=r'1 file\(s\) added \(n02102040/new.png\)'): check_image_cache(tmp_path/'cache')
    with pytest.raises(ValueError, match='holds 64 px images, 96 px were asked for') as e:
        check_image_cache(tmp_path/'cache', size=96, verify=False)
    assert f"build_image_cache({str(folder.resolve())!r}, {str(tmp_path/'cache')!r}, size=96)" in str(e.value)


def test_truncated_or_corrupt_array_refused(folder, tmp_path):
    m = build_image_cache(folder, tmp_path/'cache', size=32, progress=False)
    shutil.copytree(tmp_path/'cache', tmp_path/'cut'); shutil.copytree(tmp_path/'cache', tmp_path/'flip')
    with open(tmp_path/'cut'/'images.npy', 'r+b') as fh: fh.truncate(m['array']['bytes'] // 2)
    with open(tmp_path/'flip'/'images.npy', 'r+b') as fh: fh.seek(-7, 2); fh.write(b'\x00\x01\x02')
    with pytest.raises(ValueError, match=f"is truncated or damaged: images.npy has {m['array']['bytes'] // 2} bytes"):
        CachedImageFolder(tmp_path/'cut')
    with pytest.raises(ValueError, match='is corrupt: the sha256 of images.npy'): CachedImageFolder(tmp_path/'flip')
    (tmp_path/'cut'/'images.npy').unlink()
    with pytest.raises(ValueError, match='images.npy has no bytes'): check_image_cache(tmp_path/'cut', verify=False)


def test_interrupted_build_leaves_the_old_cache(folder, tmp_path, monkeypatch):
    "A build killed half-way (KeyboardInterrupt in the decoder) leaves no temporary folder and the previous cache intact."
    build_image_cache(folder, tmp_path/'cache', size=32, progress=False)
    calls, square_crop = [], data.square_crop
    def dies(img, size):
        calls.append(1)
        if len(calls) == 4: calls.clear(); raise KeyboardInterrupt       # the 4th image of each build
        return square_crop(img, size)
    monkeypatch.setattr(data, 'square_crop', dies)
    with pytest.raises(KeyboardInterrupt): build_image_cache(folder, tmp_path/'cache', size=48, progress=False)
    with pytest.raises(KeyboardInterrupt): build_image_cache(folder, tmp_path/'fresh', size=48, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cache', 'src']
    assert CachedImageFolder(tmp_path/'cache').size == 32


def _square_pngs(dest, side: int = 96):
    "Imagenette centre squares saved losslessly: a cache at `side` holds exactly the pixels the files decode to."
    for f in ImageFolder(imagenette_path()/'train').files[::1300]:
        (dest/f.parent.name).mkdir(parents=True, exist_ok=True)
        TF.center_crop(TF.resize(load_image(f), side), side).save(dest/f.parent.name/f'{f.stem}.png')
    return dest


def _task_datasets(cfg_fields):
    "(name, function(cache) -> the task's training dataset) for every task, through the task modules' own dataset code."
    from beitv2_lab.task_dvae import DVAEConfig, dvae_dataset
    from beitv2_lab.task_ibot import IBOTConfig, ibot_dataset
    from beitv2_lab.task_mim import MIMConfig, mim_dataset
    from beitv2_lab.task_pixdec import PixDecConfig, pixdec_dataset
    from beitv2_lab.task_vqkd import VQKDConfig, VQKDTask
    return [('vqkd', lambda c: VQKDTask().dataset(VQKDConfig(**cfg_fields, cache=c, img_size=64), None)),
            ('mim', lambda c: mim_dataset(MIMConfig(**cfg_fields, cache=c, img_size=64), tok_size=32)),
            ('dvae', lambda c: dvae_dataset(DVAEConfig(**cfg_fields, cache=c, img_size=32))),
            ('ibot', lambda c: ibot_dataset(IBOTConfig(**cfg_fields, cache=c, global_size=64, local_size=32, n_local=2))),
            ('pixdec', lambda c: pixdec_dataset(PixDecConfig(**cfg_fields, cache=c), 64))]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor): return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict): return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)): return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_every_task_transform_gives_identical_items_from_the_cache(tmp_path):
    """Where the cache is lossless (square PNGs at the cache's size), every task's training items from the cache equal
    those from the files under the harness's per-item seeds: the transforms see the same images, draw the same views."""
    src = _square_pngs(tmp_path/'sq')
    build_image_cache(src, tmp_path/'cache', size=96, progress=False)
    for name, make in _task_datasets(dict(data_path=str(src), split='train', holdout=0.3)):
        cached, files = make(str(tmp_path/'cache')), make('')
        assert len(files) >= 4, name
        assert type(cached).__name__ == 'CachedImageFolder' and cached.rel_paths() == files.rel_paths(), name
        for i in range(len(files)):
            a, b = Seeded(cached)[(i, 1000 + i)], Seeded(files)[(i, 1000 + i)]
            assert _same(a, b), f'{name}: item {i} differs'


def test_a_short_run_reads_the_cache_and_a_stale_one_stops_it_before_compute(tmp_path):
    from beitv2_lab.task_vqkd import VQKDConfig, VQKDTask
    fields = TINY_RUNS['vqkd'][1]
    src = _copy_imagenette(tmp_path/'src', every=600)
    build_image_cache(src, tmp_path/'cache', size=48, progress=False)
    cfg = dict(fields, data_path=str(src), cache=str(tmp_path/'cache'), steps=3, log_every=1, ckpt_every=3, knn_every=0,
               num_workers=1, progress=False)
    summary = run(VQKDTask(), **cfg, out_dir=str(tmp_path/'run'))
    assert [r['step'] for r in read_metrics(tmp_path/'run')] == [1, 2, 3] and summary['skipped'] == 0
    assert all(np.isfinite(r['loss']) for r in read_metrics(tmp_path/'run'))
    assert type(build_dataset(VQKDConfig(**cfg), None)).__name__ == 'CachedImageFolder'
    (src/'n01440764'/'late.JPEG').write_bytes(b'')
    with pytest.raises(ValueError, match=r'cache: decoded image cache .* is stale: 1 file\(s\) added \(n01440764/late.JPEG\)'):
        run(VQKDTask(), **cfg, out_dir=str(tmp_path/'stale'))
    assert not (tmp_path/'stale').exists()
    (src/'n01440764'/'late.JPEG').unlink()
    with pytest.raises(ValueError, match=r"cache: checkpoint .* != now ''"):                 # resumes only with its cache
        run(VQKDTask(), **{**cfg, 'cache': '', 'steps': 4}, out_dir=str(tmp_path/'run'))
