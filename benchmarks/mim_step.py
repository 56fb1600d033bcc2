"""Images/s, peak memory and FLOPs of ONE BEiT v2 MIM pretraining step, per configuration, measured in the same run.

A step = `task_mim.MIMTask.step` (frozen tokenizer forward for `tok_ids`, no grad; student forward and loss) under the
harness's autocast + backward + AdamW step (`train.build_optimizer`), on random images and `masking.block_masks` (the
official 75/196 patches, scaled to N), as in `train.fit` minus data loading and gradient clipping.

Configurations (ratios are against the first one)
- CPU: `beitv2_tiny_patch16_224` + `vqkd_tiny`, B=32: fp32 eager (baseline), fp32 eager with SDPA off, fp32 with
  `torch.compile` on the student, bf16 autocast eager (last: very slow on CPUs without native bf16 matmul).
- CUDA: `beitv2_base_patch16_224` + `vqkd_base`, B=64, bf16 autocast: eager SDPA (baseline), eager SDPA off,
  compiled SDPA, compiled SDPA off.
"SDPA off" sets `fused_attn = False` on every timm attention module of both models (timm's `set_fused_attn` only
acts on modules built afterwards): attention runs as explicit matmul + softmax instead of
`F.scaled_dot_product_attention` (which timm's BEiT calls with the relative position bias as `attn_mask`).

Method
- Each configuration runs in its own **fresh subprocess** (no allocator / kernel / compile cache shared).
  `--warmup` steps (the first one's time is printed: for compiled configs it is the compile time), then ONE step for
  peak memory, then the median (min) of `--repeats` timed steps (`time.perf_counter`, CUDA synchronised).
- Peak memory, CPU: after warmup the kernel's RSS high-water mark is reset (`/proc/self/clear_refs` <- 5), then
  peak = VmHWM after one step - RSS before it: the extra resident memory the step needs at its worst moment
  (weights, optimizer state and the compiled code are already resident and not counted; RSS before is printed).
- Peak memory, CUDA: `torch.cuda.max_memory_allocated()` over one step after `reset_peak_memory_stats` (absolute,
  so it includes weights and AdamW state; the extra over the memory allocated before the step is printed too).
- FLOPs: `torch.utils.flop_counter.FlopCounterMode` over one eager step at B=`--flop-batch` (tokenizer forward +
  student forward + backward; AdamW's elementwise update is not counted), with SDPA off (attention as explicit
  matmuls) and on; per image = total / B (the masked count per image is fixed, so FLOPs are linear in B).
  MFU (CUDA) = FLOPs/image x img/s / `--peak-tflops` (default 989: H100 SXM dense bf16, no sparsity).
- A configuration's process is killed after `--timeout` seconds (compiled ones: `--compile-timeout` more); then, or
  on any error, its row says so and the benchmark goes on.

Usage:
    python benchmarks/mim_step.py                           # CUDA if available, else CPU, defaults above
    python benchmarks/mim_step.py --device cpu --batch-size 16 --repeats 5
    python benchmarks/mim_step.py --configs fp32,bf16       # a subset (names: see --help)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]   # benchmark the working tree's beitv2_lab

# name -> (precision, compile the student, SDPA on)
CONFIGS = {'fp32': ('fp32', False, True), 'bf16': ('bf16', False, True), 'fp32-nosdpa': ('fp32', False, False),
           'fp32-compile': ('fp32', True, True), 'bf16-nosdpa': ('bf16', False, False),
           'bf16-compile': ('bf16', True, True), 'bf16-compile-nosdpa': ('bf16', True, False)}
DEFAULTS = {'cpu': dict(model='beitv2_tiny_patch16_224', tokenizer='vqkd_tiny', batch_size=32,
                        configs='fp32,fp32-nosdpa,fp32-compile,bf16'),
            'cuda': dict(model='beitv2_base_patch16_224', tokenizer='vqkd_base', batch_size=64,
                         configs='bf16,bf16-nosdpa,bf16-compile,bf16-compile-nosdpa')}


def set_sdpa(on: bool, *models) -> int:
    "Switch every timm attention module between `F.scaled_dot_product_attention` and explicit matmuls."
    mods = [m for model in models for m in model.modules() if hasattr(m, 'fused_attn')]
    if not mods: raise RuntimeError('no module with a `fused_attn` flag: timm attention changed?')
    for m in mods: m.fused_attn = on
    return len(mods)


def build(a, dev: torch.device, batch_size: int, sdpa: bool):
    "Frozen tokenizer, MIM student, AdamW and one random batch on `dev`, from the library's factories."
    from beitv2_lab.masking import block_masks
    from beitv2_lab.mim import create_mim
    from beitv2_lab.tokenizer import create_tokenizer
    from beitv2_lab.train import build_optimizer
    torch.manual_seed(0)
    tokenizer = create_tokenizer(a.tokenizer, img_size=a.img_size).to(dev).eval().requires_grad_(False)
    model = create_mim(a.model, img_size=a.img_size, head_dim=tokenizer.codebook_size).to(dev).train()
    set_sdpa(sdpa, tokenizer, model)
    opt = build_optimizer(model, lr=1.5e-3, weight_decay=0.05, betas=(0.9, 0.98))
    g = a.img_size // 16; N = g * g                                                  # patch grid of both models
    masks = block_masks(batch_size, grid=g, num_masking_patches=max(1, round(N * 75 / 196)),
                        min_num_patches=max(1, round(N * 16 / 196)), generator=0)    # bool_masked_pos [B, N]
    batch = dict(image=torch.randn(batch_size, 3, a.img_size, a.img_size, device=dev),       # backbone view, normalised
                 tok_image=torch.rand(batch_size, 3, a.img_size, a.img_size, device=dev),    # tokenizer view in [0, 1]
                 bool_masked_pos=masks.to(dev))
    return tokenizer, model, opt, batch


def train_step(net, tokenizer, opt, batch, dev, precision: str) -> torch.Tensor:
    "One MIM step as in `train.fit`: the task's step (targets + student forward) under autocast, backward, AdamW."
    from beitv2_lab.task_mim import MIMTask
    from beitv2_lab.train import Built, autocast_ctx
    built = Built(model=net, frozen=dict(tokenizer=tokenizer), net=net, device=dev)
    with autocast_ctx(dev, precision): res = MIMTask().step(built, batch, 0)
    opt.zero_grad(set_to_none=True); res['loss'].backward(); opt.step()
    return res['loss'].detach()


def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()


def rss_bytes() -> int:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def hwm_bytes() -> int:
    with open('/proc/self/status') as f: return next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmHWM'))


def reset_hwm():
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # Linux >= 4.0: VmHWM := current RSS


def step_worker(a, dev: torch.device) -> dict:
    "Warmup, one peak-memory step, `repeats` timed steps of configuration `a.worker`, in this fresh process."
    precision, compile_, sdpa = CONFIGS[a.worker]
    tokenizer, model, opt, batch = build(a, dev, a.batch_size, sdpa)
    net = torch.compile(model) if compile_ else model
    step = lambda: train_step(net, tokenizer, opt, batch, dev, precision)
    first = []
    for i in range(a.warmup):
        sync(dev); t = time.perf_counter(); loss = step(); sync(dev)
        if i == 0: first.append(time.perf_counter() - t)
    if not torch.isfinite(loss): raise FloatingPointError(f'non-finite loss {loss.item()}')
    if dev.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
        step(); sync(dev); peak = torch.cuda.max_memory_allocated()
        mem = dict(peak_bytes=peak, extra_bytes=peak - before)
    else:
        reset_hwm(); before = rss_bytes()
        step(); mem = dict(extra_bytes=hwm_bytes() - before, rss_before=before)
    times = []
    for _ in range(a.repeats):
        sync(dev); t = time.perf_counter(); step(); sync(dev); times.append(time.perf_counter() - t)
    return dict(first_step_s=first[0], times=times, loss=loss.item(), **mem)


def flop_worker(a, dev: torch.device) -> dict:
    "FLOPs of one eager fp32 step at B=`a.flop_batch`: tokenizer forward and total, SDPA off and on."
    from torch.utils.flop_counter import FlopCounterMode
    from beitv2_lab.mim import mim_targets
    out = {}
    for sdpa in (False, True):
        tokenizer, model, opt, batch = build(a, dev, a.flop_batch, sdpa)
        with FlopCounterMode(display=False) as fc_tok:
            mim_targets(tokenizer, batch['tok_image'], batch['bool_masked_pos'])
        with FlopCounterMode(display=False) as fc:
            train_step(model, tokenizer, opt, batch, dev, 'fp32')
        key = 'sdpa' if sdpa else 'matmul'
        out[key] = dict(total=fc.get_total_flops() / a.flop_batch, tokenizer=fc_tok.get_total_flops() / a.flop_batch)
    return out


def run_worker(a, kind: str, timeout: float | None = None) -> dict:
    "Run `step_worker` (kind = a config name) or `flop_worker` (kind='flops') in a fresh subprocess."
    cmd = [sys.executable, __file__, '--worker', kind] + [
        f'--{k.replace("_", "-")}={getattr(a, k)}' for k in
        ('device', 'model', 'tokenizer', 'img_size', 'batch_size', 'flop_batch', 'repeats', 'warmup', 'threads')]
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    t = time.perf_counter()
    try: out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired: return dict(error=f'timed out after {timeout:.0f} s (killed)')
    if out.returncode:
        return dict(error=f'failed (exit {out.returncode}): ' + ' | '.join(out.stderr.strip().splitlines()[-3:]))
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), wall_s=time.perf_counter() - t)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='auto: cuda if available')
    p.add_argument('--model', help='MIM variant (default: beitv2_tiny_patch16_224 on CPU, beitv2_base_patch16_224 on CUDA)')
    p.add_argument('--tokenizer', help='tokenizer variant (default: vqkd_tiny on CPU, vqkd_base on CUDA)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-size', type=int, help='B of a timed step (default: 32 on CPU, 64 on CUDA)')
    p.add_argument('--configs', help=f'comma list from {list(CONFIGS)}; the first is the baseline')
    p.add_argument('--flop-batch', type=int, default=2, help='B of the FLOP-counting step')
    p.add_argument('--repeats', type=int, default=5, help='timed steps per configuration')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps first (the first compiles, if compiled)')
    p.add_argument('--peak-tflops', type=float, default=989., help='card peak dense bf16 TFLOP/s for MFU (default: H100 SXM)')
    p.add_argument('--timeout', type=float, default=300., help='seconds before a configuration is killed')
    p.add_argument('--compile-timeout', type=float, default=180., help='extra seconds a compiled configuration may take')
    p.add_argument('--threads', type=int, default=0, help='torch threads per worker (0: torch default)')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.device == 'auto': a.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if a.device == 'cuda' and not torch.cuda.is_available(): p.error('--device cuda: no CUDA device here')
    for k, v in DEFAULTS[a.device].items():
        if getattr(a, k) is None: setattr(a, k, v)
    bad = [c for c in a.configs.split(',') if c not in CONFIGS]
    if bad: p.error(f'--configs: unknown {bad}; choose from {list(CONFIGS)}')
    for k in ('img_size', 'batch_size', 'flop_batch', 'repeats', 'warmup'):
        if getattr(a, k) < 1: p.error(f'--{k.replace("_", "-")} must be >= 1, got {getattr(a, k)}')
    if a.img_size % 16: p.error(f'--img-size must be a multiple of the patch size 16, got {a.img_size}')
    return a


def main():
    a = parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    if a.worker:
        print(json.dumps(flop_worker(a, dev) if a.worker == 'flops' else step_worker(a, dev))); return
    names = a.configs.split(',')
    where = torch.cuda.get_device_name() if dev.type == 'cuda' else f'CPU, {a.threads or torch.get_num_threads()} threads'
    print(f'one MIM step (tokenizer fwd no-grad + student fwd + bwd + AdamW): {a.model} + {a.tokenizer}, '
          f'img {a.img_size}, B={a.batch_size}, torch {torch.__version__}, {where}; time: median of {a.repeats} '
          f'steps after {a.warmup} warmup, each config in a fresh process')
    fl = run_worker(a, 'flops')
    if 'error' in fl: print(f'FLOP count {fl["error"]}'); flops = None
    else:
        m, s = fl['matmul'], fl['sdpa']
        flops = m['total']
        print(f"FLOPs/image (FlopCounterMode, B={a.flop_batch}): {flops / 1e9:.2f} GFLOP "
              f"(tokenizer fwd {m['tokenizer'] / 1e9:.2f}, student fwd+bwd {(flops - m['tokenizer']) / 1e9:.2f}); "
              f"with SDPA on the counter sees {s['total'] / 1e9:.2f}")
    res = {}
    for name in names:
        compiled = CONFIGS[name][1]
        r = res[name] = run_worker(a, name, a.timeout + (a.compile_timeout if compiled else 0))
        if 'error' in r: print(f'{name:20s} {r["error"]}'); continue
        r['ips'] = a.batch_size / statistics.median(r['times'])
        ref = res[names[0]]
        mk = 'peak_bytes' if dev.type == 'cuda' else 'extra_bytes'
        ratio = f"x{r['ips'] / ref['ips']:.2f} speed, x{r[mk] / ref[mk]:.2f} mem" if 'ips' in ref else ''
        if dev.type == 'cuda':
            mem = f"max_allocated {r['peak_bytes'] / 2**30:6.2f} GiB (step extra {r['extra_bytes'] / 2**30:.2f})"
        else:
            mem = f"peak extra {r['extra_bytes'] / 2**20:7.0f} MiB (rss before {r['rss_before'] / 2**20:.0f})"
        perf = f"{flops * r['ips'] / 1e12:.3f} TFLOP/s" if flops else ''
        if flops and dev.type == 'cuda': perf += f", MFU {flops * r['ips'] / (a.peak_tflops * 1e12):.1%} of {a.peak_tflops:g}"
        print(f"{name:20s} {r['ips']:8.1f} img/s [{a.batch_size / max(r['times']):.1f}-"
              f"{a.batch_size / min(r['times']):.1f}]  {mem}  {perf}  first step {r['first_step_s']:.1f} s  {ratio}")
    if dev.type == 'cuda': print(f'MFU peak: --peak-tflops {a.peak_tflops:g} (default 989 = H100 SXM dense bf16)')


if __name__ == '__main__':
    main()
