"""Images/s of the BEiT v2 two-view input pipeline per DataLoader worker and on the GPU, vs what a training step eats.

JPEG files of an image folder -> `data.TwoViewTransform` (the MIM pretraining views), measured several ways.

Rows (same files, same run)
- decode only, the baseline: JPEG bytes already in memory -> RGB pixels, main process: PIL (`Image.open().convert`)
  and `torchvision.io.decode_jpeg` on the CPU.
- transform only: `TwoViewTransform(224, tok 224)` (jitter, flip, one crop box resized twice, normalise) on decoded
  PIL images in memory, main process.
- CPU loader: `DataLoader(ImageFolder(transform=TwoViewTransform), batch_size, num_workers=w, collate)` for each
  `--workers` entry: read + decode + transform in the workers (w = 0: in the main process).
- train.make_loader: the same through `train.Seeded` + `train.StreamSampler` (per-item seeding), as the harness
  loads an image folder today.
- `--shards`: the same files written to WebDataset shards (`shards.write_shards`, in a temporary folder) and read
  with `shards.ShardStream` + `shard_loader`, same transform, per worker count.
- device path (`--device cuda`, the default when CUDA is available): the main process reads the file bytes
  (`torchvision.io.read_file`), `decode_jpeg(list_of_byte_tensors, device=...)` decodes the batch (nvJPEG), then on
  the device: a RandomResizedCrop box per image and `transforms.v2.functional.resized_crop` to both views (bicubic,
  antialias), then on the batch: brightness/contrast/saturation with per-image factors (same strength 0.4, fixed
  order, after the crop: the same arithmetic as ColorJitter, not bit-identical to the PIL path), a per-image flip
  and `normalize`. Its rows split the time into file reading (CPU, main thread) and device work (synchronised).
  `--device cpu` runs the same batched tensor code on the CPU (labelled so); without CUDA the GPU row says it is
  not available.

A `RESULT {json}` line (every row measured so far) follows each measurement; benchmarks/gpu_check.sh reads the last.

Method: every process uses one torch thread (DataLoader workers do; the main process is set to it, since intra-op
threads on busy cores slow these small ops down several times). Each measurement first runs one batch untimed
(worker start-up, first calls, CUDA/nvJPEG init), then times `--n-images` images (wall clock, `time.perf_counter`;
the device path synchronises each batch); all rows are measured in `--repeats` interleaved rounds, so a shared,
noisy machine loads them alike, and the median is printed. img/s per worker = img/s / max(w, 1).
"workers for target" = ceil(target / per-worker img/s): an EXTRAPOLATION from the measured
per-worker rate, assuming one free core per worker and no shared limit (disk, memory bandwidth, page cache); on a
shared machine with fewer cores than workers the measured rate stops growing.

The need: a ViT-B/16 MIM step (tokenizer forward + student forward/backward) at `--target-img-s` images/s per GPU
(default 3000, about an H100 in bf16) consumes that many images/s from its loader; see benchmarks/mim_step.py for
measured step rates.

Usage:
    python benchmarks/loader.py                                   # 512 images, workers 0 1 2, CUDA if available
    python benchmarks/loader.py --n-images 128 --batch-size 32 --shards   # quick, on a small CPU machine
    python benchmarks/loader.py --n-images 2048 --workers 0 2 4 8 16 --batch-size 128 --shards
    python benchmarks/loader.py --device cpu                      # the batched tensor path on the CPU
"""
from __future__ import annotations

import argparse
import atexit
import io
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]   # benchmark the working tree's beitv2_lab
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO/'benchmarks'))

from _bench import emit, env_info                                                # noqa: E402

from beitv2_lab.data import ImageFolder, TwoViewTransform, collate, load_image   # noqa: E402
from beitv2_lab.train import Seeded, StreamSampler                               # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)   # timm IMAGENET_DEFAULT_MEAN/STD, as TwoViewTransform


def rate(n: int, seconds: float) -> float: return n / seconds if seconds > 0 else float('inf')


def decode_rate(blobs: list[bytes], lib: str) -> float:
    "img/s of decoding in-memory JPEG bytes to RGB in this process: 'pil' or 'torchvision' (io.decode_jpeg, CPU)."
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg
    if lib == 'pil': fn, xs = (lambda b: Image.open(io.BytesIO(b)).convert('RGB')), blobs
    else:
        fn = lambda x: decode_jpeg(x, mode=ImageReadMode.RGB)
        xs = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    for x in xs[:8]: fn(x)
    t = time.perf_counter()
    for x in xs: fn(x)
    return rate(len(xs), time.perf_counter() - t)


def transform_rate(images, size: int, tok_size: int) -> float:
    "img/s of TwoViewTransform alone on decoded PIL images, main process."
    tf = TwoViewTransform(size=size, tok_size=tok_size)
    for im in images[:4]: tf(im)
    t = time.perf_counter()
    for im in images: tf(im)
    return rate(len(images), time.perf_counter() - t)


def loader_rate(dl, n_images: int) -> float:
    "img/s of a DataLoader after its first (untimed) batch, over at least `n_images` images."
    it = iter(dl); next(it)
    seen, t = 0, time.perf_counter()
    while seen < n_images:
        b = next(it); seen += len(b.get('index', [])) + len(b['skipped'])
    out = rate(seen, time.perf_counter() - t)
    del it
    return out


CPU_DECODE_FALLBACKS = [0]   # batches the device decoder refused, decoded on the CPU instead (named in the device rows)


def device_views(blobs: list[torch.Tensor], device: torch.device, size: int, tok_size: int, jitter: float = 0.4) -> dict:
    "The two BEiT views of a batch, decoded and transformed on `device`: {'image' [B,3,size,size], 'tok_image'}."
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import InterpolationMode, RandomResizedCrop
    from torchvision.transforms.v2 import functional as F
    try: imgs = decode_jpeg(blobs, mode=ImageReadMode.RGB, device=device)     # list of [3, H, W] uint8 on device
    except RuntimeError:                                                       # e.g. a CMYK JPEG that nvJPEG refuses
        imgs = [decode_jpeg(b, mode=ImageReadMode.RGB).to(device) for b in blobs]; CPU_DECODE_FALLBACKS[0] += 1
    views, toks = [], []
    for im in imgs:
        box = RandomResizedCrop.get_params(im, (0.2, 1.0), (3 / 4, 4 / 3))       # (top, left, height, width)
        x = F.to_dtype(im, torch.float32, scale=True)
        views.append(F.resized_crop(x, *box, [size, size], InterpolationMode.BICUBIC, antialias=True))
        toks.append(F.resized_crop(x, *box, [tok_size, tok_size], InterpolationMode.BICUBIC, antialias=True))
    x, tok, b = torch.stack(views), torch.stack(toks), len(imgs)                # [B, 3, S, S]
    u = lambda: torch.empty(b, 1, 1, 1, device=device).uniform_(1 - jitter, 1 + jitter)
    bright, contrast, sat = u(), u(), u()
    flip = torch.rand(b, 1, 1, 1, device=device) < 0.5
    out = []
    for v in (x, tok):                                                          # the same jitter and flip on both views
        v = (v * bright).clamp(0, 1)
        v = (contrast * v + (1 - contrast) * F.rgb_to_grayscale(v).mean((-3, -2, -1), keepdim=True)).clamp(0, 1)
        v = (sat * v + (1 - sat) * F.rgb_to_grayscale(v)).clamp(0, 1)
        out.append(torch.where(flip, v.flip(-1), v))
    return {'image': F.normalize(out[0], list(MEAN), list(STD)), 'tok_image': out[1]}


def device_rates(files: list[Path], batch_size: int, n_images: int, device: torch.device, size: int, tok_size: int):
    "(end-to-end, file reading only, device work only) img/s of the batched device path; the main process reads."
    from torchvision.io import read_file
    sync = torch.cuda.synchronize if device.type == 'cuda' else (lambda: None)
    batches = [files[i:i + batch_size] for i in range(0, len(files) - batch_size + 1, batch_size)]
    out = device_views([read_file(str(f)) for f in batches[0]], device, size, tok_size); sync()   # warm-up
    assert out['image'].shape == (batch_size, 3, size, size), out['image'].shape
    assert out['tok_image'].shape == (batch_size, 3, tok_size, tok_size), out['tok_image'].shape
    t_read = t_dev = 0.; seen = 0
    for fs in batches[1:]:
        if seen >= n_images: break
        t = time.perf_counter(); blobs = [read_file(str(f)) for f in fs]
        t2 = time.perf_counter(); device_views(blobs, device, size, tok_size); sync()
        t_read += t2 - t; t_dev += time.perf_counter() - t2; seen += len(fs)
    return rate(seen, t_read + t_dev), rate(seen, t_read), rate(seen, t_dev)


def measurements(a, files, rel, blobs, images, device, run_device) -> list:
    "(row name, workers, function -> img/s) for every row; the device path's function gives its three rates."
    tf = TwoViewTransform(size=a.size, tok_size=a.tok_size)
    ds = ImageFolder(a.data_path, transform=tf, files=rel)
    DL = torch.utils.data.DataLoader
    ms = [('decode only: PIL', '-', lambda: decode_rate(blobs[:a.n_images], 'pil')),
          ('decode only: torchvision.io.decode_jpeg (cpu)', '-', lambda: decode_rate(blobs[:a.n_images], 'torchvision')),
          ('TwoViewTransform only (PIL in memory)', '-', lambda: transform_rate(images, a.size, a.tok_size))]
    for w in a.workers:
        ms.append(('ImageFolder + TwoViewTransform loader', w, lambda w=w: loader_rate(
            DL(ds, batch_size=a.batch_size, num_workers=w, collate_fn=collate), a.n_images)))
    for w in a.workers:                                                        # what train.make_loader builds
        ms.append(('train.make_loader: Seeded(ImageFolder) + StreamSampler', w, lambda w=w: loader_rate(
            DL(Seeded(ds), batch_size=a.batch_size, sampler=StreamSampler(len(ds)), num_workers=w, collate_fn=collate),
            a.n_images)))
    if a.shards: ms += shard_measurements(a, ds, tf)
    if run_device:
        where = 'GPU' if device.type == 'cuda' else 'cpu batched tensors'
        ms.append((f'{where}: read files + decode_jpeg(list) + v2 ops', 'main',
                   lambda: device_rates(files, a.batch_size, a.n_images, device, a.size, a.tok_size)))
    return ms


def summarise(ms: list, got: list, device) -> list:
    "(name, workers, img/s, img/s per worker) rows: the median of the rounds measured so far of each measurement."
    rows = []
    for (name, w, _), rs in zip(ms, got):
        if not rs: continue
        if isinstance(rs[0], tuple):                                           # the device path: total, read, device
            total, read, dev = (statistics.median(r[j] for r in rs) for j in range(3))
            base = name.split(':')[0]
            if CPU_DECODE_FALLBACKS[0]: name += f' ({CPU_DECODE_FALLBACKS[0]} batches decoded on the CPU: the device refused them)'
            rows += [(name, w, total, total), (f'{base}: file reading only (main thread)', w, read, read),
                     (f'{base}: decode + transforms only ({device.type})', '-', dev, None)]
        else:
            r = statistics.median(rs)
            rows.append((name, w, r, r / max(w, 1) if isinstance(w, int) else r))
    return rows


def shard_measurements(a, ds, tf) -> list:
    "ShardStream + shard_loader over the same files, written once to temporary tar shards, per worker count."
    from beitv2_lab.shards import ShardStream, shard_loader, write_shards
    ws = [w for w in a.workers if w > 0]
    lanes = math.lcm(*ws) if ws else 1
    d = Path(tempfile.mkdtemp(prefix='loader_bench_')); atexit.register(shutil.rmtree, d, True)
    write_shards(ds, d/'shards', max_count_per_shard=max(1, len(ds) // (2 * lanes)))
    stream = ShardStream.from_index(d/'shards', transform=tf, batch_size=a.batch_size, lanes=lanes, shuffle_buffer=0)
    return [(f'ShardStream (tar shards, lanes={lanes}) + TwoViewTransform', w,
             lambda w=w: loader_rate(shard_loader(stream, num_workers=w), a.n_images)) for w in a.workers]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n-images', type=int, default=512, help='images timed per measurement')
    p.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2], help='DataLoader worker counts to measure')
    p.add_argument('--batch-size', type=int, default=64, help='images per batch (loader and device path)')
    p.add_argument('--device', default='auto', choices=['auto', 'cuda', 'cpu'],
                   help="device of the batched decode + transform path ('auto': cuda if available, else not run)")
    p.add_argument('--target-img-s', type=float, default=3000., help='img/s one GPU consumes (ViT-B/16 MIM step)')
    p.add_argument('--data-path', default=str(REPO.parent/'shared'/'data'/'imagenette2-224'/'train'),
                   help='image folder of JPEG files')
    p.add_argument('--size', type=int, default=224, help="backbone view side ('image')")
    p.add_argument('--tok-size', type=int, default=224, help="tokenizer view side ('tok_image')")
    p.add_argument('--shards', action='store_true', help='also measure ShardStream over the same files as tar shards')
    p.add_argument('--repeats', type=int, default=3, help='rounds over all rows (interleaved); the median is shown')
    p.add_argument('--seed', type=int, default=0, help='which files are drawn')
    a = p.parse_args()
    for k in ('n_images', 'batch_size', 'size', 'tok_size', 'repeats'):
        if getattr(a, k) < 1: p.error(f'--{k.replace("_", "-")} must be >= 1')
    if min(a.workers) < 0: p.error('--workers must be >= 0')
    if a.target_img_s <= 0: p.error('--target-img-s must be > 0')
    if a.device == 'cuda' and not torch.cuda.is_available(): p.error('--device cuda: no CUDA device here')
    run_device = a.device == 'cpu' or torch.cuda.is_available()
    device = torch.device('cpu' if a.device == 'cpu' or not torch.cuda.is_available() else 'cuda')
    torch.set_num_threads(1)   # the main process works like one DataLoader worker (they run with 1 torch thread each)

    full = ImageFolder(a.data_path)
    need = a.n_images + a.batch_size                                           # + one untimed batch
    pick = torch.randperm(len(full), generator=torch.Generator().manual_seed(a.seed))[:need].tolist()
    if len(pick) < need: p.error(f'--n-images {a.n_images} + one batch needs {need} files, {a.data_path} has {len(full)}')
    rel = [full.rel_paths()[i] for i in pick]
    files = [full.root/r for r in rel]
    blobs = [f.read_bytes() for f in files]                                    # also warms the page cache
    images = [load_image(f) for f in files[:a.n_images]]
    px = statistics.mean(im.width * im.height for im in images)
    print(f'input pipeline: {a.data_path} ({len(full)} files), {a.n_images} timed images (+1 untimed batch), '
          f'mean {px / 1e3:.0f}k px, {statistics.mean(map(len, blobs)) / 1e3:.0f} kB per file; TwoViewTransform '
          f'{a.size}/{a.tok_size}, batch {a.batch_size}; torch {torch.__version__}, 1 torch thread per process, '
          f'{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; median of {a.repeats} interleaved rounds')
    print(f'need: a ViT-B/16 MIM step at --target-img-s {a.target_img_s:g} consumes {a.target_img_s:g} img/s per GPU '
          f'from its loader. "workers for target" = ceil(target / per-worker img/s): extrapolated, not measured')

    ms = measurements(a, files, rel, blobs, images, device, run_device)
    got = [[] for _ in ms]
    def result(rows):     # a RESULT after every measurement (the table reads the last): a part killed at its limit keeps them
        emit('loader', **env_info(device), data_path=a.data_path, n_files=len(full), n_images=a.n_images,
             batch_size=a.batch_size, target_img_s=a.target_img_s, device_path=device.type if run_device else None,
             rows=[dict(path=name, workers=w, img_s=r, img_s_per_worker=per) for name, w, r, per in rows])
    for _ in range(a.repeats):
        for i, (_, _, fn) in enumerate(ms):
            got[i].append(fn())
            result(summarise(ms, got, device))
    rows = summarise(ms, got, device)
    print(f"\n{'path':60s} {'workers':>7s} {'img/s':>8s} {'img/s/worker':>12s} {'workers for target':>18s}")
    for name, w, r, per in rows:
        per_s, need_w = (f'{per:.0f}', f'{math.ceil(a.target_img_s / per)}') if per else ('-', '-')
        print(f'{name:60s} {str(w):>7s} {r:8.0f} {per_s:>12s} {need_w:>18s}')
    if not run_device: print('GPU path (decode_jpeg on cuda + v2 ops on device): not available, no CUDA device here '
                             '(--device cpu runs the same batched code on the CPU)')
    elif device.type == 'cuda':
        dev = next(r for name, _, r, _ in rows if ': decode + transforms only' in name)   # img/s of the device work alone
        print(f'GPU: decode + transforms take {1e6 / dev:.1f} us of GPU time per image = '
              f'{100 * a.target_img_s / dev:.1f}% of the GPU at {a.target_img_s:g} img/s (time the step cannot use)')


if __name__ == '__main__':
    main()
