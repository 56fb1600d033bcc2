"""The VQ-KD dead-code restart rule, ablated with seeds: one tokenizer run per (setting, seed), one after the other,
then a table of what each reached.

    python benchmarks/vqkd_restarts.py                                  # restart_grace 0 / 25 at the default, seeds 0, 1
    python benchmarks/vqkd_restarts.py --grid restart_grace=0,25 codebook_size=8192,1024 --seeds 0,1 -p steps 220

Each run is `run(VQKDTask(), VQKDConfig(...))` (what `nbs/train_vqkd.ipynb` calls) with the defaults, `-p` overrides
and one point of `--grid`. Reported per run: cosine to the teacher (mean of the last three log windows: one window is
noisy), restarts per step over the last 50 steps and in all, and the held-out utilisation: the share of the K codes
that the trained tokenizer uses on ~102,400 patch vectors of images it did not train on (for the embedded photos:
crops drawn with another seed; for a folder: its holdout part). Wall times are printed too; compare them only
between runs of one invocation on a quiet machine.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_value(cls, name: str, text: str):
    "`text` as the type of config field `name` (a clear error for a name that is not a field)."
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields: raise SystemExit(f'{name}: not a field of {cls.__name__}')
    default = fields[name].default
    return type(default)(text) if isinstance(default, (int, float)) and not isinstance(default, bool) else text


def heldout_utilisation(cfg, tokenizer_path: Path, n_vectors: int = 102_400) -> float:
    "% of the codes used on about `n_vectors` patch vectors of images the run did not train on."
    from beitv2_lab.data import EmbeddedPhotos, EvalTransform
    from beitv2_lab.report import code_usage, encode_images
    from beitv2_lab.tokenizer import load_tokenizer
    from beitv2_lab.train import build_dataset
    tok = load_tokenizer(tokenizer_path)
    n_images = n_vectors // (cfg.img_size // 16) ** 2
    tf = EvalTransform(size=cfg.img_size, mean=None)
    if cfg.data_path == 'embedded': ds = EmbeddedPhotos(n_samples=n_images, size=cfg.img_size, transform=tf, seed=cfg.seed + 1000)
    else: ds = build_dataset(dataclasses.replace(cfg, split='holdout'), tf)
    ids, _ = encode_images(tok, ds, n_images=n_images, keep_images=False)
    return 100. * (code_usage(ids, tok.codebook_size) > 0).float().mean().item()


def one_run(overrides: dict, out_root: Path) -> dict:
    from beitv2_lab.task_vqkd import VQKDConfig, VQKDTask
    from beitv2_lab.train import read_metrics, run
    name = '_'.join(f'{k}{v}' for k, v in overrides.items())
    cfg = VQKDConfig(**{**overrides, 'out_dir': str(out_root/name), 'progress': False})
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    t = time.perf_counter(); run(VQKDTask(), cfg); wall = time.perf_counter() - t
    rows = read_metrics(cfg.out_dir)
    back = next((r for r in rows if r['step'] >= rows[-1]['step'] - 50), rows[0])
    return dict(overrides, cos=sum(r['cos'] for r in rows[-3:]) / len(rows[-3:]),
                restarts_per_step=(rows[-1]['restarts'] - back['restarts']) / max(1, rows[-1]['step'] - back['step']),
                restarts=rows[-1]['restarts'], heldout_utilisation=heldout_utilisation(cfg, Path(cfg.out_dir)/'tokenizer.safetensors'),
                wall_s=wall)


def main():
    from beitv2_lab.task_vqkd import VQKDConfig
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--grid', nargs='*', default=['restart_grace=0,25'], help='field=v1,v2 ... (all combinations)')
    p.add_argument('--seeds', default='0,1')
    p.add_argument('-p', nargs=2, action='append', default=[], metavar=('FIELD', 'VALUE'), help='a fixed override')
    p.add_argument('--out', default='runs/vqkd_restarts')
    a = p.parse_args()
    fixed = {k: parse_value(VQKDConfig, k, v) for k, v in a.p}
    axes = [(k, [parse_value(VQKDConfig, k, v) for v in vs.split(',')]) for k, vs in (g.split('=', 1) for g in a.grid)]
    rows = []
    for point in itertools.product(*[vs for _, vs in axes]):
        for seed in (int(s) for s in a.seeds.split(',')):
            res = one_run({**fixed, **dict(zip([k for k, _ in axes], point)), 'seed': seed}, Path(a.out))
            print('RESULT', json.dumps(res), flush=True); rows.append(res)
    keys = [k for k, _ in axes] + ['seed']
    print('\n| ' + ' | '.join(keys) + ' | cos to teacher (last 3 windows) | restarts per step (last 50) | restarts | held-out utilisation | wall |')
    print('|' + '---|' * (len(keys) + 5))
    for r in rows:
        print('| ' + ' | '.join(str(r[k]) for k in keys) + f" | {r['cos']:.3f} | {r['restarts_per_step']:.1f} | {r['restarts']:,} | "
              f"{r['heldout_utilisation']:.1f}% | {r['wall_s']:.0f} s |")


if __name__ == '__main__':
    main()
