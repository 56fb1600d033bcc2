"""Time and peak memory of ONE iBOT loss step, ours (`beitv2_lab.ibot`) against lightly's, at the same sizes in one run.

A step = head forward on given backbone outputs + the CLS (DINO) loss + the masked-patch (iBOT) loss + backward:
- inputs (random, seeded, identical for both): teacher tokens `[G*B, 1+N, D]` (no grad), the student's tokens of the
  masked global crops `[G*B, 1+N, D]` and CLS tokens of the local crops `[L*B, D]` (both requiring grad), and
  `masking.ibot_masks` for the global crops;
- ours: `IBOTHead` (teacher and student) + `IBOTLoss` as `ibot.IBOT.forward` calls them: the teacher head on CLS and
  on ALL N patches of each global crop (the official patch centre and the code-id / entropy monitors use every patch),
  the student head on the CLS tokens and the masked patches only;
- lightly (a peer, `pip install lightly`): `DINOProjectionHead` (teacher and student) + `DINOLoss` + `IBOTPatchLoss`
  as in lightly's iBOT example: both heads on CLS tokens and on the masked patches only (its patch centre follows
  the masked teacher tokens, a different statistic from the official one).
Same head sizes (3 layers, hidden 2048, bottleneck 256, K = --out-dim), fp32, temperatures 0.04 / 0.1.

Before timing, a check run gives both the same head weights and inputs and prints the loss difference at zero
centres (the two losses are the same formula there: DINO pairs of different views; per-image mean over masked
patches, then mean over images).

Method: each implementation runs in its own fresh subprocess; --warmup untimed steps, one step for peak memory
(CUDA: `max_memory_allocated` after `reset_peak_memory_stats`, absolute; CPU: VmHWM after one step minus RSS before
it, i.e. the extra resident memory the step needs), then the median of --repeats timed steps (synchronised).
`--inline` runs them in this process instead (CPU smoke runs); without lightly installed, ours alone is measured. A
`RESULT {json}` line follows ours and another ends the run (benchmarks/gpu_check.sh reads the last; a part killed at its
time limit keeps ours; helpers: benchmarks/_bench.py).

Usage:
    python benchmarks/ibot_step.py                                    # CUDA if available, else CPU
    python benchmarks/ibot_step.py --device cpu --batch-size 8 --n-tokens 196 --out-dim 8192 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (add_run_args, emit, env_info, finish_args, hwm_bytes, importable, reset_hwm, rss_bytes,  # noqa: E402
                    run_worker, serve, sync)

G, HIDDEN, BOTTLENECK, T_TEACHER, T_STUDENT = 2, 2048, 256, 0.04, 0.1


def grid_of(n: int) -> tuple[int, int]:
    h = int(n ** 0.5)
    while n % h: h -= 1
    return h, n // h


def inputs(a, dev) -> dict:
    "Seeded backbone outputs and masks, the same in every process."
    from beitv2_lab.masking import ibot_masks
    g = torch.Generator().manual_seed(0)
    B, N, D, L = a.batch_size, a.n_tokens, a.embed_dim, a.n_local
    t_tok = torch.randn(G * B, 1 + N, D, generator=g)
    s_tok = torch.randn(G * B, 1 + N, D, generator=g)
    s_loc = torch.randn(L * B, D, generator=g)
    masks = ibot_masks(G * B, grid_of(N), generator=1)
    return dict(t_tok=t_tok.to(dev), s_tok=s_tok.to(dev).requires_grad_(), s_loc=s_loc.to(dev).requires_grad_(),
                masks=masks.to(dev))


def build_ours(a, dev):
    from beitv2_lab.ibot import IBOTHead, IBOTLoss
    torch.manual_seed(0)
    head = lambda nl: IBOTHead(a.embed_dim, a.out_dim, hidden_dim=HIDDEN, bottleneck_dim=BOTTLENECK, norm_last_layer=nl)
    s_head, t_head = head(False).to(dev), head(True).to(dev).requires_grad_(False)
    crit = IBOTLoss(a.out_dim, n_global=G, warmup_teacher_temp=T_TEACHER, teacher_temp=T_TEACHER,
                    warmup_patch_temp=T_TEACHER, patch_temp=T_TEACHER, student_temp=T_STUDENT).to(dev).train()

    def step(x):
        with torch.no_grad(): t_cls, t_patch = t_head(x['t_tok'])                    # [G*B, K], [G*B, N, K]
        s_cls = s_head.cls_logits(torch.cat([x['s_tok'][:, 0], x['s_loc']]))
        s_patch = s_head.patch_logits(x['s_tok'][:, 1:][x['masks']])
        loss = crit(s_cls, s_patch, t_cls, t_patch, x['masks'])['loss']
        loss.backward()
        return loss.detach()
    return (s_head, t_head), step


def build_lightly(a, dev):
    from lightly.loss import DINOLoss, IBOTPatchLoss
    from lightly.models.modules import DINOProjectionHead
    torch.manual_seed(0)
    head = lambda nl: DINOProjectionHead(a.embed_dim, HIDDEN, BOTTLENECK, a.out_dim, norm_last_layer=nl)
    s_head, t_head = head(False).to(dev), head(True).to(dev).requires_grad_(False)
    dino = DINOLoss(a.out_dim, warmup_teacher_temp=T_TEACHER, teacher_temp=T_TEACHER, student_temp=T_STUDENT).to(dev)
    ibot = IBOTPatchLoss(a.out_dim, teacher_temp=T_TEACHER, student_temp=T_STUDENT).to(dev)
    V = G + a.n_local

    def step(x):
        m = x['masks']
        with torch.no_grad():
            t_cls, t_masked = t_head(x['t_tok'][:, 0]), t_head(x['t_tok'][:, 1:][m])
        s_cls = s_head(torch.cat([x['s_tok'][:, 0], x['s_loc']]))
        s_masked = s_head(x['s_tok'][:, 1:][m])
        loss = (dino(teacher_out=list(t_cls.chunk(G)), student_out=list(s_cls.chunk(V)), teacher_temp=T_TEACHER)
                + ibot(teacher_out=t_masked, student_out=s_masked, mask=m.view(m.shape[0], *grid_of(a.n_tokens)),
                       teacher_temp=T_TEACHER))
        loss.backward()
        return loss.detach()
    return (s_head, t_head), step


def to_lightly(sd: dict) -> dict:
    "Our head's state dict under DINOProjectionHead names (`layers.i`, old-style `weight_g`/`weight_v`)."
    return {k.replace('mlp.', 'layers.').replace('parametrizations.weight.original0', 'weight_g')
             .replace('parametrizations.weight.original1', 'weight_v'): v for k, v in sd.items()}


def check_worker(a, dev) -> dict:
    "Both implementations with the same head weights and inputs: their losses at zero centres."
    (o_s, o_t), ours = build_ours(a, dev)
    (l_s, l_t), light = build_lightly(a, dev)
    l_s.load_state_dict(to_lightly(o_s.state_dict()), strict=True)
    l_t.load_state_dict(to_lightly(o_t.state_dict()), strict=True)
    lo, ll = ours(inputs(a, dev)).item(), light(inputs(a, dev)).item()
    return dict(ours=lo, lightly=ll)


def step_worker(a, dev) -> dict:
    _, step = (build_ours if a.worker == 'ours' else build_lightly)(a, dev)
    x = inputs(a, dev)
    clear = lambda: [setattr(t, 'grad', None) for t in (x['s_tok'], x['s_loc'])]
    for _ in range(a.warmup): loss = step(x); clear()
    sync(dev)
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
        step(x); sync(dev); clear(); mem = dict(peak_bytes=torch.cuda.max_memory_allocated(), before_bytes=before)
    else:
        reset_hwm(); before = rss_bytes(); step(x); clear(); mem = dict(peak_bytes=hwm_bytes() - before, before_bytes=before)
    times = []
    for _ in range(a.repeats):
        sync(dev); t = time.perf_counter(); step(x); sync(dev); times.append(time.perf_counter() - t); clear()
    return dict(times=times, loss=loss.item(), **mem)


WORKER_KEYS = ('device', 'batch_size', 'n_tokens', 'out_dim', 'embed_dim', 'n_local', 'repeats', 'warmup', 'threads')


def worker(a) -> dict:
    "This process as a worker: the check (a.worker == 'check') or one implementation's step."
    dev = torch.device(a.device)
    return check_worker(a, dev) if a.worker == 'check' else step_worker(a, dev)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch-size', type=int, default=None, help='B, images per global crop (default: 8 CPU, 64 CUDA)')
    p.add_argument('--n-tokens', type=int, default=196, help='N, patches per global crop (224 px, patch 16: 196)')
    p.add_argument('--out-dim', type=int, default=8192, help='K, prototypes')
    p.add_argument('--embed-dim', type=int, default=384, help='D of the backbone tokens (ViT-S: 384)')
    p.add_argument('--n-local', type=int, default=10, help='local crops per image (their CLS tokens)')
    add_run_args(p, timeout=600., flops=False)
    a = finish_args(p, p.parse_args(argv), dict(cpu=dict(batch_size=8), cuda=dict(batch_size=64)),
                    ('batch_size', 'n_tokens', 'out_dim', 'embed_dim', 'repeats', 'warmup'))
    if a.n_local < 0: p.error('--n-local must be >= 0')
    if min(grid_of(a.n_tokens)) < 2: p.error(f'--n-tokens {a.n_tokens} has no grid of at least 2x2 for block masks')
    return a


def main():
    a = parse_args()
    if (dev := serve(a, worker)) is None: return
    has_lightly, where = importable('lightly'), env_info(dev)['device_name']
    print(f'one iBOT loss step (heads fwd + CLS and patch losses + bwd), fp32: B={a.batch_size} x {G} global + '
          f'{a.n_local} local, N={a.n_tokens}, D={a.embed_dim}, K={a.out_dim}; torch {torch.__version__}, {where}; '
          f'median of {a.repeats} after {a.warmup} warmup, each in a fresh process')
    res, c = {}, {}
    def result():         # a RESULT after ours and at the end (the table reads the last): a part killed at its limit keeps ours
        emit('ibot_step', **env_info(dev), batch_size=a.batch_size, n_tokens=a.n_tokens, out_dim=a.out_dim,
             embed_dim=a.embed_dim, n_local=a.n_local, inline=a.inline, check=c,
             impls={n: {k: v for k, v in r.items() if k != 'times'} for n, r in res.items()})
    for name in ('check', 'ours', 'lightly') if has_lightly else ('ours',):
        r = run_worker(__file__, a, name, WORKER_KEYS, worker, a.timeout)
        if name == 'check':
            c = r
            if 'error' in c: print(f'check {c["error"]}')
            else: print(f"same weights and inputs, zero centres: loss ours {c['ours']:.6f}, lightly {c['lightly']:.6f}, "
                        f"|diff| {abs(c['ours'] - c['lightly']):.2e}")
            continue
        res[name] = r
        if 'error' in r: print(f'{name:8s} {r["error"]}'); continue
        r['med'] = statistics.median(r['times'])
        what = 'max_allocated' if dev.type == 'cuda' else 'peak extra RSS'
        print(f"{name:8s} {r['med'] * 1e3:9.1f} ms [{min(r['times']) * 1e3:.1f}-{max(r['times']) * 1e3:.1f}]  "
              f"{what} {r['peak_bytes'] / 2**20:8.0f} MiB")
        if name == 'ours': result()
    if not has_lightly: c = dict(error='lightly not installed')
    if has_lightly and all('med' in r for r in res.values()):
        o, l = res['ours'], res['lightly']
        print(f"ours / lightly: time x{o['med'] / l['med']:.2f}, memory x{o['peak_bytes'] / max(l['peak_bytes'], 1):.2f}")
    if not has_lightly: print('lightly is not installed (pip install lightly): ours only'); res['lightly'] = c
    result()


if __name__ == '__main__':
    main()
