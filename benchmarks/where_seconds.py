"""Where a laptop comparison's seconds go: per method and stage, the seconds per training image spent on the data path
(read + decode + augment + collate), on the frozen target's forward (a teacher, a tokenizer, iBOT's EMA teacher) and
on the trained model's step (forward, backward, AdamW, the loop's bookkeeping).

The runs are exactly the comparison's (`compare.run_configs` of a `CompareConfig` built from the `-p` overrides, the
same fields as `nbs/compare_targets.ipynb`), shortened to `--steps` and with the online k-NN off, one after the other in
this process:

- **step interval**: `train.run` with `num_workers=0`, so the loader runs in the training process and each interval
  between two `task.step` calls is data + target + step; the median interval after the first `--skip` steps.
- **target forward**: forward hooks on every submodule of the built run's frozen modules (`Built.frozen`) and of iBOT's
  EMA teacher (`model.teacher`), the outermost call timed (so `encode` as well as `forward` is seen; the few tensor ops
  between two submodule calls are not), summed per step; the median over the same steps.
- **data path**: `train.make_loader` over the task's own dataset in this process (`num_workers=0`), after one untimed
  batch: the median batch time over `--data-batches` batches.
- **model step**: the step interval less the data and the target.

With `num_workers >= 1` (the comparison's 2), the data path runs in worker processes beside the step, so a real run
pays max(data / workers, step) rather than their sum; this table says which part bounds each method. Both cores are
used by torch's threads in the step; the data path's share is measured single-process, as the harness' workers run it.

Usage:
    python benchmarks/where_seconds.py -p img_size 128 -p batch_size 32 -p codebook_size 1024   # the laptop comparison's regime
    python benchmarks/where_seconds.py --methods pixels,vqkd --steps 8
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]   # benchmark the working tree's beitv2_lab
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO/'benchmarks'))

from _bench import env_info                                                  # noqa: E402
from learning_curves import parse_value                                      # noqa: E402

from beitv2_lab.compare import CompareConfig, check_compare, run_configs     # noqa: E402
from beitv2_lab.train import make_loader, run                                # noqa: E402

IMAGENETTE = REPO.parent/'shared'/'data'/'imagenette2-224'/'train'


def target_modules(built) -> list[torch.nn.Module]:
    "The modules of a built run whose forward makes the target: its frozen helpers and iBOT's EMA teacher."
    mods = [m for m in built.frozen.values() if isinstance(m, torch.nn.Module)]
    if isinstance(getattr(built.model, 'teacher', None), torch.nn.Module): mods.append(built.model.teacher)
    return mods


def profile_stage(task, cfg, steps: int, skip: int, data_batches: int, out_dir: Path) -> dict:
    "Seconds per image of one run config: step interval, target forward, data path, and the model step as the rest."
    stamps, target_s, cur, built_box = [], [], {'t': 0., 'depth': 0}, {}

    def pre(mod, args):                       # hooks on every submodule: the outermost call's time counts once
        if cur['depth'] == 0: cur['t0'] = time.perf_counter()
        cur['depth'] += 1
    def post(mod, args, out):
        cur['depth'] -= 1
        if cur['depth'] == 0: cur['t'] += time.perf_counter() - cur['t0']

    class Timed(type(task)):
        def build(self, cfg, device):
            built = super().build(cfg, device)
            for m in (s for t in target_modules(built) for s in t.modules()):   # any call path (encode, forward) is seen
                m.register_forward_pre_hook(pre); m.register_forward_hook(post)
            built_box['built'] = built
            return built
        def step(self, built, batch, step):
            stamps.append(time.perf_counter()); target_s.append(cur['t']); cur['t'] = 0.
            return super().step(built, batch, step)
    timed = Timed(); timed.__dict__.update(task.__dict__)
    rcfg = dataclasses.replace(cfg, steps=steps, warmup_steps=1, ckpt_every=steps, knn_every=0, num_workers=0,
                               out_dir=str(out_dir), progress=False)
    t0 = time.perf_counter(); run(timed, rcfg); wall = time.perf_counter() - t0
    # interval i (stamps[i] -> stamps[i+1]) holds step i's target and compute, then batch i+1's loading;
    # target_s[i+1] is the target time accumulated during step i
    intervals = [b - a for a, b in zip(stamps[skip:], stamps[skip + 1:])]
    targets = target_s[skip + 1:]
    it = iter(make_loader(timed.dataset(rcfg, built_box['built']), rcfg, 0, torch.device('cpu')))   # the built task: iBOT keeps its dataset on itself
    next(it)
    batch_s = []
    for _ in range(data_batches):
        t = time.perf_counter(); next(it); batch_s.append(time.perf_counter() - t)
    b = rcfg.batch_size
    step_i, tgt, data = statistics.median(intervals) / b, statistics.median(targets) / b, statistics.median(batch_s) / b
    return dict(interval_ms=1e3 * step_i, data_ms=1e3 * data, target_ms=1e3 * tgt, model_ms=1e3 * (step_i - data - tgt),
                img_per_s=1 / step_i, run_wall_s=wall, steps_timed=len(intervals))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('-p', nargs=2, action='append', default=[], metavar=('FIELD', 'VALUE'), help='a CompareConfig override')
    p.add_argument('--methods', default='pixels,hog,teacher,dvae,vqkd,ibot')
    p.add_argument('--steps', type=int, default=12, help='steps per run (the first --skip are not timed)')
    p.add_argument('--skip', type=int, default=3)
    p.add_argument('--data-batches', type=int, default=6)
    p.add_argument('--data', default=str(IMAGENETTE))
    p.add_argument('--json', default='', help='also write the rows here')
    a = p.parse_args()
    over = {k: parse_value(CompareConfig, k, v) for k, v in a.p}
    print(env_info('cpu'), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CompareConfig(**{'data_path': a.data, 'methods': a.methods, **over, 'out_dir': tmp})
        methods, (seed, *_) = check_compare(cfg)
        for m in methods:
            for stage, task, rcfg in run_configs(cfg, m, seed):   # a token method's MIM stage reads the short tokenizer made first
                r = profile_stage(task, rcfg, a.steps, a.skip, a.data_batches, Path(rcfg.out_dir))
                rows.append(dict(method=m, stage=stage, **r))
                print(f"{m:8s} {stage:9s} interval {r['interval_ms']:6.1f} ms/img = data {r['data_ms']:5.1f} + target "
                      f"{r['target_ms']:5.1f} + model {r['model_ms']:6.1f}   ({r['img_per_s']:.1f} img/s in-process)", flush=True)
    print('\n| method | stage | ms per image: data path | target forward | model step | in-process img/s |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        print(f"| {r['method']} | {r['stage']} | {r['data_ms']:.1f} | {r['target_ms']:.1f} | {r['model_ms']:.1f} | {r['img_per_s']:.1f} |")
    if a.json: Path(a.json).write_text(json.dumps(dict(overrides=over, rows=rows), indent=1))


if __name__ == '__main__':
    main()
