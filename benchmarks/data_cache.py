"""Images/s per method with and without the decoded image cache (`data.build_image_cache`): the data path alone and a
few training steps, in one invocation.

Setup: `--n-images` files drawn (seeded) from `--data-path` are linked into a temporary class-folder tree and one
cache of them is built at each `--cache-sizes` entry (its build time, bytes and open cost are printed; the folder
check and the sha256 are also timed on the whole `--data-path`, the sha256 by extrapolating the rate measured here).
Then, for each method of `--methods` at the small CPU settings of `METHODS` (low resolution, batch `--batch-size`):

- data path alone: `train.make_loader` over the task's own dataset (`task.dataset`, built by `task.build`), with
  `num_workers=0` and one torch thread: read + decode (or the cache's memory map) + the task's transform + collate,
  in one process. img/s after one untimed batch, over `--data-batches` batches; the variants (files, each cache) are
  interleaved over `--repeats` rounds and the median is printed.
- training steps: `train.run` of the task in this process (`--steps` steps, no k-NN, `num_workers=0`: the loader
  runs in the training process, so per image the cost is data + step and what the cache saves shows directly). The
  wall and CPU clocks are read as each step starts (the task's `step`, wrapped); img/s and img per CPU-second are
  over the steps after the first two (the loader's start-up and the first, checked step).
- transforms alone (one cached 224 px square, one thread): each task's PIL transform on `planes_to_pil` of the stored
  array vs torchvision v2 equivalents on the uint8 tensor (the same ops, torch's kernels): what a tensor pipeline
  would gain. The tasks keep PIL: torch's bicubic (a = -0.75) and colour ops are not PIL's, so the views would differ.

On a shared machine (other jobs running) wall-clock rates move with the load; img per CPU-second (this process's CPU
time: every thread of the loop, data included) is what "more training per CPU-hour" asks for, and moves less.
Compare the variants within one invocation only.

Usage:
    python benchmarks/data_cache.py                                   # 192 images, all methods, caches at 224 and 96 (~3 min on 2 cores)
    python benchmarks/data_cache.py --methods vqkd mim --steps 6 --cache-sizes 224
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]   # benchmark the working tree's beitv2_lab
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO/'benchmarks'))

from _bench import emit, env_info                                                          # noqa: E402

from beitv2_lab import data                                                                # noqa: E402
from beitv2_lab.data import ImageFolder, build_image_cache, check_image_cache, planes_to_pil  # noqa: E402
from beitv2_lab.train import make_loader, run                                              # noqa: E402

METHODS = {   # method -> (task 'module:class', config fields at small CPU settings; batch_size, data and output come from the flags)
    'vqkd': ('beitv2_lab.task_vqkd:VQKDTask', dict(teacher='hog', model='vqkd_tiny', img_size=64, teacher_size=64,
                                                   codebook_size=1024, code_dim=32)),
    'mim': ('beitv2_lab.task_mim:MIMTask', dict(model='beitv2_tiny_patch16_224', img_size=64, tokenizer='{tokenizer}')),
    'dvae': ('beitv2_lab.task_dvae:DVAETask', dict(model='dvae_tiny', img_size=32, eval_images=0)),
    'ibot': ('beitv2_lab.task_ibot:IBOTTask', dict(global_size=64, local_size=32, n_local=4, out_dim=1024, hidden_dim=512,
                                                   bottleneck_dim=64)),
    'pixdec': ('beitv2_lab.task_pixdec:PixDecTask', dict(tokenizer='{tokenizer}', eval_images=0)),
}


def task_and_config(method: str, a, tokenizer: str, **fields):
    "The task object and its config for `method` at the benchmark's settings, with `fields` on top."
    import importlib
    where, base = METHODS[method]
    module, cls = where.split(':')
    task = getattr(importlib.import_module(module), cls)()
    base = {k: v.format(tokenizer=tokenizer) if isinstance(v, str) else v for k, v in base.items()}
    cfg = task.Config(**base, batch_size=a.batch_size, warmup_steps=1, knn_every=0, progress=False, seed=a.seed)
    return task, dataclasses.replace(cfg, **fields)


def link_files(a, root: Path) -> Path:
    "`--n-images` files of `--data-path` (a seeded draw) symlinked into `root/<class>/`: a folder the caches can cover."
    full = ImageFolder(a.data_path)
    pick = torch.randperm(len(full), generator=torch.Generator().manual_seed(a.seed))[:a.n_images].tolist()
    for i in sorted(pick):
        f = full.files[i]; (root/f.parent.name).mkdir(parents=True, exist_ok=True)
        (root/f.parent.name/f.name).symlink_to(f.resolve())
    return root


def cache_costs(a, src: Path, tmp: Path) -> dict:
    "Build one cache per `--cache-sizes` entry; time the build, the open checks, and the folder check of all of --data-path."
    out = {}
    for s in a.cache_sizes:
        t = time.perf_counter(); m = build_image_cache(src, tmp/f'cache{s}', size=s, progress=False); build = time.perf_counter() - t
        t = time.perf_counter(); check_image_cache(tmp/f'cache{s}', verify=False); stat = time.perf_counter() - t
        t, c = time.perf_counter(), time.process_time(); data._sha256(tmp/f'cache{s}'/'images.npy')
        sha, sha_cpu = time.perf_counter() - t, time.process_time() - c
        out[s] = dict(images=len(m['files']), bytes=m['array']['bytes'], build_s=build, check_s=stat, sha_s=sha, sha_cpu_s=sha_cpu,
                      sha_mb_cpu_s=m['array']['bytes'] / 1e6 / max(sha_cpu, 1e-3))
    t, c = time.perf_counter(), time.process_time()
    data._file_stats(Path(a.data_path), data._find_images(Path(a.data_path), data.IMG_EXTENSIONS))
    out['folder_stat_s'], out['folder_stat_cpu_s'] = time.perf_counter() - t, time.process_time() - c
    out['folder_files'] = len(ImageFolder(a.data_path))
    return out


def data_rate(task, cfg, built, batches: int) -> tuple[float, float]:
    """(img/s, img per CPU-second) of `train.make_loader` over the task's dataset in this process (num_workers=0), after
    one untimed batch. CPU time (this process's) is what a loaded machine disturbs least."""
    it = iter(make_loader(task.dataset(cfg, built), dataclasses.replace(cfg, num_workers=0), 0, torch.device('cpu')))
    next(it)
    t, c, seen = time.perf_counter(), time.process_time(), 0
    for _ in range(batches): seen += len(next(it)['index'])
    return seen / (time.perf_counter() - t), seen / (time.process_time() - c)


def train_rate(task, cfg, out_dir: Path, skip: int = 2) -> tuple[float, float]:
    """(img/s, img per CPU-second) of a short `train.run`, from the wall and CPU clocks read as each `task.step` starts,
    after the first `skip` steps: the loader's draws (num_workers=0: in this process), the step and the loop's
    bookkeeping; build, first steps and the final checkpoint left out."""
    stamps = []
    class Timed(type(task)):
        def step(self, built, batch, step):
            stamps.append((time.perf_counter(), time.process_time()))
            return super().step(built, batch, step)
    timed = Timed(); timed.__dict__.update(task.__dict__)
    run(timed, cfg, out_dir=str(out_dir))
    n = (len(stamps) - 1 - skip) * cfg.batch_size
    return n / (stamps[-1][0] - stamps[skip][0]), n / (stamps[-1][1] - stamps[skip][1])


def v2_equivalents():
    "torchvision v2 versions of the tasks' PIL transforms, on uint8 tensors: (name, PIL transform, v2 transform)."
    from torchvision.transforms import v2
    from beitv2_lab.data import MultiCropTransform, TokenizerTransform, TwoViewTransform
    B = v2.InterpolationMode.BICUBIC
    def rrc(size, scale): return v2.RandomResizedCrop(size, scale, interpolation=B, antialias=True)
    norm = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
    tok = v2.Compose([rrc(64, (0.08, 1.)), v2.RandomHorizontalFlip(), v2.ToDtype(torch.float32, scale=True)])
    jitter = v2.ColorJitter(0.4, 0.4, 0.4)
    def two(x):
        x = v2.RandomHorizontalFlip()(jitter(x)); box = v2.RandomResizedCrop.get_params(x, (0.2, 1.), (3 / 4, 4 / 3))
        f = v2.functional.to_dtype(v2.functional.resized_crop(x, *box, [64, 64], B, antialias=True), torch.float32, scale=True)
        return {'image': v2.functional.normalize(f, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), 'tok_image': f}
    def crop(size, scale, blur):
        return v2.Compose([rrc(size, scale), v2.RandomHorizontalFlip(), v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                           v2.RandomGrayscale(0.2), v2.RandomApply([v2.GaussianBlur(13, (0.1, 2.))], p=blur), *norm])
    g1, g2, loc = crop(64, (0.25, 1.), 1.), crop(64, (0.25, 1.), 0.1), crop(32, (0.05, 0.25), 0.5)
    multi = lambda x: {'crops': [g1(x), g2(x)] + [loc(x) for _ in range(4)]}
    return [('TokenizerTransform(64) (vqkd, dvae, pixdec)', TokenizerTransform(64), tok),
            ('TwoViewTransform(64, 64) (mim)', TwoViewTransform(64, 64), two),
            ('MultiCropTransform(64, 32, 4 local) (ibot)', MultiCropTransform(64, 32, n_local=4), multi)]


def transform_rates(cache_dir: Path, n: int) -> list:
    "(name, img/s PIL, img/s v2) over `n` cached squares, one thread: `planes_to_pil` + PIL transform vs tensor + v2."
    arr = np.load(cache_dir/'images.npy', mmap_mode='r')[:n]
    rows = []
    for name, pil_tf, v2_tf in v2_equivalents():
        rates = []
        for fn in (lambda a: pil_tf(planes_to_pil(a)), lambda a: v2_tf(torch.from_numpy(np.array(a)))):
            fn(arr[0]); t = time.perf_counter()
            for a in arr: fn(a)
            rates.append(len(arr) / (time.perf_counter() - t))
        rows.append((name, *rates))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data-path', default=str(REPO.parent/'shared'/'data'/'imagenette2-224'/'train'), help='image folder')
    p.add_argument('--n-images', type=int, default=192, help='files drawn from --data-path (the caches hold these)')
    p.add_argument('--cache-sizes', type=int, nargs='+', default=[224, 96], help='side S of each cache built')
    p.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS), help='methods to measure')
    p.add_argument('--batch-size', type=int, default=16, help='images per step and per loader batch')
    p.add_argument('--data-batches', type=int, default=3, help='timed batches of each data-path measurement')
    p.add_argument('--repeats', type=int, default=2, help='interleaved rounds of the data-path measurements (median)')
    p.add_argument('--steps', type=int, default=8, help='training steps per run (the first 2 untimed)')
    p.add_argument('--seed', type=int, default=0, help='which files are drawn, and the runs\' seed')
    a = p.parse_args()
    for k in ('n_images', 'batch_size', 'data_batches', 'repeats'):
        if getattr(a, k) < 1: p.error(f'--{k.replace("_", "-")} must be >= 1')
    if a.steps < 4: p.error('--steps must be >= 4 (2 untimed, then at least 2 timed)')
    if a.n_images < a.batch_size * (a.data_batches + 1): p.error('--n-images must hold --data-batches + 1 batches')
    threads = torch.get_num_threads()
    tmp = Path(tempfile.mkdtemp(prefix='data_cache_bench_'))
    try: report(a, tmp, threads)
    finally: shutil.rmtree(tmp, ignore_errors=True)


def report(a, tmp: Path, threads: int):
    from beitv2_lab.tokenizer import create_tokenizer, save_tokenizer
    src = link_files(a, tmp/'images')
    print(f'data: {a.n_images} files of {a.data_path} (symlinked), caches at {a.cache_sizes} px; batch {a.batch_size}; '
          f'torch {torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start')
    costs = cache_costs(a, src, tmp)
    n_full = costs['folder_files']
    for s in a.cache_sizes:
        c = costs[s]; full_gb = n_full * 3 * s * s / 1e9
        print(f'cache {s:3d} px: built in {c["build_s"]:.1f} s ({c["images"] / c["build_s"]:.0f} img/s, 1 process), '
              f'{c["bytes"] / 1e6:.0f} MB; open: folder check {1e3 * c["check_s"]:.0f} ms, sha256 {1e3 * c["sha_s"]:.0f} ms wall, '
              f'{1e3 * c["sha_cpu_s"]:.0f} ms CPU ({c["sha_mb_cpu_s"]:.0f} MB per CPU-s) -> whole folder ({n_full} images, '
              f'{full_gb:.2f} GB): sha256 ~{full_gb * 1e3 / c["sha_mb_cpu_s"]:.1f} CPU-s')
    print(f'folder check of the whole --data-path ({n_full} files stat-ed): {1e3 * costs["folder_stat_s"]:.0f} ms wall, '
          f'{1e3 * costs["folder_stat_cpu_s"]:.0f} ms CPU')
    torch.manual_seed(0)
    tokenizer = str(save_tokenizer(create_tokenizer('vqkd_tiny', img_size=64, codebook_size=1024), tmp/'tok.safetensors'))
    variants = [('files', '')] + [(f'cache {s}', str(tmp/f'cache{s}')) for s in a.cache_sizes]
    rows = []
    for method in a.methods:
        torch.set_num_threads(1)
        task, cfg = task_and_config(method, a, tokenizer, data_path=str(src))
        built = task.build(cfg, torch.device('cpu'))
        got = {v: [] for v, _ in variants}
        for _ in range(a.repeats):
            for v, cache in variants: got[v].append(data_rate(task, dataclasses.replace(cfg, cache=cache), built, a.data_batches))
        torch.set_num_threads(threads)
        row = dict(method=method, data={v: statistics.median(r[0] for r in rs) for v, rs in got.items()},
                   data_cpu={v: statistics.median(r[1] for r in rs) for v, rs in got.items()}, train={}, train_cpu={})
        for v, cache in variants:
            t, c = task_and_config(method, a, tokenizer, data_path=str(src), cache=cache, steps=a.steps, log_every=a.steps,
                                   ckpt_every=a.steps, num_workers=0)
            row['train'][v], row['train_cpu'][v] = train_rate(t, c, tmp/'runs'/f'{method}_{v.replace(" ", "")}')
        rows.append(row)
        print(f'{method}: data path ' + ', '.join(f'{v} {r:.0f} ({row["data_cpu"][v]:.0f}/CPU-s)' for v, r in row['data'].items()) +
              ' img/s; training ' + ', '.join(f'{v} {r:.1f} ({row["train_cpu"][v]:.1f}/CPU-s)' for v, r in row['train'].items()) +
              ' img/s', flush=True)
    torch.set_num_threads(1)
    tf_rows = transform_rates(tmp/f'cache{max(a.cache_sizes)}', min(64, a.n_images))
    torch.set_num_threads(threads)

    names = [v for v, _ in variants]
    print(f'\n(data path: median of {a.repeats} interleaved rounds of {a.data_batches} batches, 1 torch thread; training: steps 3-{a.steps} '
          f'of a run, loader in the training process, {threads} torch threads; img/CPU-s: per second of this process\'s CPU time)')
    kinds = (('data', 'data img/s'), ('data_cpu', 'data img/CPU-s'), ('train', 'train img/s'), ('train_cpu', 'train img/CPU-s'))
    print('| method | ' + ' | '.join(f'{label} {n}' for _, label in kinds for n in names) + ' |')
    print('|---' * (1 + len(kinds) * len(names)) + '|')
    for r in rows:
        cells = [f"{r[k][n]:.{0 if k.startswith('data') else 1}f}" + (f" (x{r[k][n] / r[k]['files']:.2f})" if n != 'files' else '')
                 for k, _ in kinds for n in names]
        print(f"| {r['method']} | " + ' | '.join(cells) + ' |')
    print(f'load average at the end: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)')
    print(f'\ntransforms alone on cached {max(a.cache_sizes)} px squares (1 thread): PIL (what the tasks use) vs torchvision v2 on uint8 tensors')
    for name, pil, v2r in tf_rows: print(f'  {name:45s} PIL {pil:6.0f} img/s   v2 {v2r:6.0f} img/s   x{v2r / pil:.2f}')
    emit('data_cache', **env_info('cpu'), data_path=a.data_path, n_images=a.n_images, batch_size=a.batch_size, steps=a.steps, costs={str(k): v for k, v in costs.items()}, rows=rows,
         transforms=[dict(transform=n, pil_img_s=p_, v2_img_s=v) for n, p_, v in tf_rows])


if __name__ == '__main__':
    main()
