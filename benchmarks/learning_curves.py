"""Learning curves of one method on the harness: train once with checkpoints every `--every` steps, then score every
checkpoint (and the same seed's model at init, step 0) on held-out images.

    python benchmarks/learning_curves.py ibot --seeds 0 -p steps 1600 -p global_size 64 ...   # see docs/guides/learning-curves.md
    python benchmarks/learning_curves.py --plot runs/curves/ibot_* --png nbs/images/curves_ibot.png

Each run is `run(Task(), Config(...))` (what the run notebooks call) with the method's defaults and the `-p` overrides,
on `--data` (split 'train'); nothing here changes how a method trains. Scored per checkpoint, on images the run did not
train on (the folder's 'holdout' part):
- every method: k-NN top-1 of the online k-NN's features (`task.features`: iBOT's teacher CLS, MIM's CLS, VQ-KD's
  encoder, the dVAE's mean logits), the bank `--bank` images of the train part, the queries the whole holdout part,
  with its binomial standard error sqrt(p(1-p)/n);
- dVAE: held-out PSNR of decode(encode(x)) beside each 8x8 patch at its mean colour (and their paired difference per
  image, `psnr_gain` with its standard error), and held-out code usage;
- VQ-KD: held-out utilisation (share of K used on the holdout part);
- the run's own log rows at that step (iBOT's teacher CLS entropy, VQ-KD's restarts and cosine, ...) are joined in.
Rows go to `<out>/<method>_<tag>seed<s>/curve.jsonl`, one per checkpoint; a finished run is scored again, not retrained.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
IMAGENETTE = REPO.parent/'shared'/'data'/'imagenette2-224'/'train'


def method(name: str):
    "(Task, Config) of a method name."
    if name == 'ibot':
        from beitv2_lab.task_ibot import IBOTConfig, IBOTTask; return IBOTTask, IBOTConfig
    if name == 'dvae':
        from beitv2_lab.task_dvae import DVAEConfig, DVAETask; return DVAETask, DVAEConfig
    if name == 'vqkd':
        from beitv2_lab.task_vqkd import VQKDConfig, VQKDTask; return VQKDTask, VQKDConfig
    if name == 'mim':
        from beitv2_lab.task_mim import MIMConfig, MIMTask; return MIMTask, MIMConfig
    raise SystemExit(f'method must be ibot, dvae, vqkd or mim, got {name!r}')


def parse_value(cls, name: str, text: str):
    "`text` as the type of config field `name` (a clear error for a name that is not a field)."
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields: raise SystemExit(f'{name}: not a field of {cls.__name__}')
    default = fields[name].default
    if isinstance(default, bool): return text.lower() in ('1', 'true', 'yes')
    if name in cls.schedule_fields: return int(text) if text.strip().lstrip('+-').isdigit() else float(text)   # steps or a fraction
    return type(default)(text) if isinstance(default, (int, float)) else text


class Scorer:
    "Held-out scores of one run config's models: k-NN always, the method's own health where it has one."
    def __init__(self, name: str, cfg, bank: int, task=None):
        "`task`: the Task whose `build` and `features` are scored (default: the method's own; a peer task of it)."
        from beitv2_lab.evaluate import eval_datasets
        from beitv2_lab.train import resolve_schedules
        self.name, self.cfg = name, resolve_schedules(cfg)        # as `run` does: the built model sees steps
        self.task = task or method(name)[0]()
        size = self.task.feature_size(cfg)
        self.train, self.test = eval_datasets(cfg.data_path, img_size=size, holdout=cfg.holdout)
        if bank and len(self.train) > bank:
            self.train = torch.utils.data.Subset(self.train, range(0, len(self.train), -(-len(self.train) // bank)))

    def build(self, device='cpu'):
        torch.manual_seed(self.cfg.seed)                          # as train._setup: the model at init is the run's step 0
        built = self.task.build(self.cfg, torch.device(device))
        built.cfg, built.device = self.cfg, torch.device(device)
        return built

    @torch.no_grad()
    def score(self, built) -> dict:
        from beitv2_lab.core import knn_eval
        from beitv2_lab.evaluate import extract_features
        built.model.eval()
        fn = lambda x: self.task.features(built, x).float()
        (ftr, ltr), (fte, lte) = extract_features(fn, self.train), extract_features(fn, self.test)
        top1 = knn_eval(ftr, ltr, fte, lte, k=20)['top1']
        p = top1 / 100
        row = dict(knn_top1=top1, knn_se=100 * math.sqrt(p * (1 - p) / len(lte)), knn_queries=len(lte), knn_bank=len(ltr))
        if self.name == 'dvae': row.update(self.dvae(built))
        if self.name == 'vqkd': row.update(self.vqkd(built))
        return row

    def dvae(self, built) -> dict:
        from beitv2_lab.report import eval_dataset
        from beitv2_lab.task_dvae import evaluate_dvae
        ds, _ = eval_dataset(self.cfg, 10 ** 6)
        res = evaluate_dvae(built.model, ds, batch_size=64)   # with the 8x8 patch-mean baseline and the paired gain
        return dict(psnr=res['psnr'], patch_mean_psnr=res['patch_mean_psnr'], psnr_gain=res['psnr_gain'],
                    psnr_gain_se=res['psnr_gain_se'], utilisation=res['utilisation'], psnr_images=res['n_images'])

    def vqkd(self, built) -> dict:
        from beitv2_lab.report import code_usage, eval_dataset
        ds, _ = eval_dataset(self.cfg, 10 ** 6)
        model, ids = built.model, []
        loader = torch.utils.data.DataLoader(ds, batch_size=64)
        for b in loader: ids.append(model.encode(b['image']).flatten())
        k = model.codebook_size
        return dict(heldout_utilisation=100. * (code_usage(torch.cat(ids), k) > 0).float().mean().item())


def log_row(rows: list, step: int) -> dict:
    "The run's log row at `step` (or the last one before it), without its step."
    best = [r for r in rows if r['step'] <= step]
    return {f'log_{k}': v for k, v in (best[-1] if best else {}).items() if k != 'step' and isinstance(v, (int, float))}


def one_run(name: str, overrides: dict, out: Path, every: int, bank: int) -> Path:
    from beitv2_lab.train import load_checkpoint, read_metrics, run
    task_cls, cfg_cls = method(name)
    cfg = cfg_cls(**{**overrides, 'out_dir': str(out), 'progress': False, 'ckpt_every': every, 'keep_checkpoints': 10 ** 6})
    if not (out/'summary.json').exists():
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter(); run(task_cls(), cfg)
        (out/'wall.json').write_text(json.dumps(dict(wall_s=time.perf_counter() - t, threads=torch.get_num_threads())))
    scorer, logs = Scorer(name, cfg, bank), read_metrics(out)
    wall = json.loads((out/'wall.json').read_text())['wall_s'] if (out/'wall.json').exists() else float('nan')
    rows, built = [], scorer.build()
    rows.append(dict(step=0, images=0, **scorer.score(built)))
    for ck in sorted((out/'checkpoints').glob('step_*')):
        step = load_checkpoint(ck, built.model)['step']
        rows.append(dict(step=step, images=step * cfg.batch_size * cfg.nproc_per_node * cfg.nnodes, **scorer.score(built), **log_row(logs, step)))
        print(name, out.name, json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items() if not k.startswith('log_')}), flush=True)
    for r in rows: r['run_wall_s'] = wall
    (out/'curve.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return out/'curve.jsonl'


def run_config(run_dir: Path) -> dict:
    "The config a run trained with (from its first checkpoint), or {}."
    found = sorted((run_dir/'checkpoints').glob('step_*/config.json'))
    return json.loads(found[0].read_text()) if found else {}


def plot(dirs: list, png: str):
    "One figure: k-NN top-1 (±1 s.e.) and the methods' health curves against images seen, one line per run."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    curves = {Path(d).name: [json.loads(l) for l in (Path(d)/'curve.jsonl').read_text().splitlines()] for d in dirs}
    logs = {n: [json.loads(l) for l in (Path(d)/'metrics.jsonl').read_text().splitlines()] for n, d in zip(curves, dirs)}
    def acc_main(rows, i):                                   # MIM: mean of the log windows since the previous checkpoint
        name = next(n for n, c in curves.items() if c is rows)
        w = [r['acc_main'] for r in logs[name] if 'acc_main' in r and (rows[i - 1]['step'] if i else 0) < r['step'] <= rows[i]['step']]
        return 100 * sum(w) / len(w) if i and w else None
    def restarts(rows, i):                                   # VQ-KD: restarts per step since the previous checkpoint
        a, b = rows[i - 1] if i else None, rows[i]
        return None if not i or 'log_restarts' not in b or 'log_restarts' not in a else (b['log_restarts'] - a['log_restarts']) / (b['step'] - a['step'])
    health = [('log_teacher_entropy_cls', 'teacher CLS entropy (nats)', lambda rows, i: rows[i].get('log_teacher_entropy_cls')),
              ('psnr', 'held-out PSNR (dB)', lambda rows, i: rows[i].get('psnr')),
              ('usage', 'held-out code usage (% of K)', lambda rows, i: rows[i].get('heldout_utilisation', rows[i].get('utilisation'))),
              ('restarts', 'dead-code restarts per step', restarts),
              ('log_cos', 'cosine to the teacher (training window)', lambda rows, i: rows[i].get('log_cos')),
              ('acc_main', 'MIM masked-code accuracy (%, mean since the previous point)', acc_main)]
    health = [h for h in health if any(h[2](c, i) is not None for c in curves.values() for i in range(len(c)))]
    fig, axs = plt.subplots(1, 1 + len(health), figsize=(4.6 * (1 + len(health)), 3.6), squeeze=False)
    for name, rows in curves.items():
        x = [r['images'] / 1000 for r in rows]
        y, e = [r['knn_top1'] for r in rows], [r['knn_se'] for r in rows]
        axs[0, 0].errorbar(x, y, yerr=e, marker='o', ms=3, capsize=2, label=name)
        for ax, (k, t, get) in zip(axs[0, 1:], health):
            pts = [(r['images'] / 1000, v) for i, r in enumerate(rows) if (v := get(rows, i)) is not None]
            if pts: ax.plot(*zip(*pts), marker='o', ms=3, label=name)
            ax.set_title(t, fontsize=10)
            if k == 'log_teacher_entropy_cls' and (K := run_config(Path(dirs[list(curves).index(name)])).get('out_dim')):
                ax.axhline(0.8 * math.log(K), ls='--', c='gray', label=f'0.8 ln K (K = {K})' if name == list(curves)[0] else None)
            if k == 'restarts' and (K := run_config(Path(dirs[list(curves).index(name)])).get('codebook_size')):
                ax.axhline(0.001 * K, ls='--', c='gray', label=f'0.1% of K (K = {K})' if name == list(curves)[0] else None)
            if k == 'psnr':
                ax.plot(x, [r['patch_mean_psnr'] for r in rows], ls='--', c='gray', label='8x8 patch mean' if name == list(curves)[0] else None)
    axs[0, 0].set_title('k-NN top-1 on held-out images (%, ±1 s.e.)', fontsize=10)
    for ax in axs.flat: ax.set_xlabel('images seen (thousands)'); ax.grid(alpha=.3)
    axs[0, 0].legend(fontsize=7)
    for ax in axs[0, 1:]:
        if ax.get_legend_handles_labels()[0]: ax.legend(fontsize=7)
    fig.tight_layout(); fig.savefig(png, dpi=110); print('wrote', png)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('method', nargs='?', help='ibot, dvae, vqkd or mim')
    p.add_argument('--seeds', default='0')
    p.add_argument('-p', nargs=2, action='append', default=[], metavar=('FIELD', 'VALUE'), help='a config override')
    p.add_argument('--every', type=int, default=200, help='checkpoint (and score) every N steps')
    p.add_argument('--bank', type=int, default=2000, help='k-NN bank: at most this many train-part images')
    p.add_argument('--data', default=str(IMAGENETTE))
    p.add_argument('--tag', default='', help='a name part of the run folders')
    p.add_argument('--out', default='runs/curves')
    p.add_argument('--plot', nargs='*', help='run folders to draw (no training)')
    p.add_argument('--png', default='curves.png')
    a = p.parse_args()
    if a.plot: return plot(a.plot, a.png)
    _, cfg_cls = method(a.method)
    fixed = {'data_path': a.data, 'split': 'train', **{k: parse_value(cfg_cls, k, v) for k, v in a.p}}
    for seed in (int(s) for s in a.seeds.split(',')):
        one_run(a.method, {**fixed, 'seed': seed}, Path(a.out)/f'{a.method}_{a.tag}seed{seed}', a.every, a.bank)


if __name__ == '__main__':
    main()
