"""Images/s, peak memory and FLOPs of ONE BEiT v2 MIM pretraining step, per configuration, measured in the same run.

A step = `task_mim.MIMTask.step` (frozen tokenizer forward for `tok_ids`, no grad; student forward and loss) under the
harness's autocast + backward + AdamW step (`train.build_optimizer`), on random images and the run's masks
(`task_mim.mim_masks`: the official exact 75/196 patches, scaled to N), as in `train.fit` minus data loading and gradient
clipping; every configuration first runs one eager step, as `fit` does (compiled ones compile from the second).

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
- `--inline` runs every configuration in this one process instead (CPU smoke runs: a process start costs more than a
  tiny step; memory and compile figures then share the process, no timeout). After each configuration a line
  `RESULT {json}` (configs so far: img/s, memory, FLOPs, MFU) is printed; benchmarks/gpu_check.sh reads the last.

Usage:
    python benchmarks/mim_step.py                           # CUDA if available, else CPU, defaults above
    python benchmarks/mim_step.py --device cpu --batch-size 16 --repeats 5
    python benchmarks/mim_step.py --configs fp32,bf16       # a subset (names: see --help)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (add_run_args, compile_model, count_flops, emit, env_info, finish_args,  # noqa: E402
                    measure, run_worker, serve, step_row, task_step)

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
    from beitv2_lab.task_mim import mim_masks
    from beitv2_lab.mim import create_mim
    from beitv2_lab.tokenizer import create_tokenizer
    from beitv2_lab.train import build_optimizer
    torch.manual_seed(0)
    tokenizer = create_tokenizer(a.tokenizer, img_size=a.img_size).to(dev).eval().requires_grad_(False)
    model = create_mim(a.model, img_size=a.img_size, head_dim=tokenizer.codebook_size).to(dev).train()
    set_sdpa(sdpa, tokenizer, model)
    opt = build_optimizer(model, lr=1.5e-3, weight_decay=0.05, betas=(0.9, 0.98))
    masks = mim_masks(run_config(a))(batch_size, generator=0)                       # bool_masked_pos [B, N], the run's masks
    batch = dict(image=torch.randn(batch_size, 3, a.img_size, a.img_size, device=dev),       # backbone view, normalised
                 tok_image=torch.rand(batch_size, 3, a.img_size, a.img_size, device=dev),    # tokenizer view in [0, 1]
                 bool_masked_pos=masks.to(dev))
    return tokenizer, model, opt, batch


def run_config(a):
    "The `MIMConfig` of a run at these shapes (its masks: BEiT v2's exact 75 of 196, scaled to the grid)."
    from beitv2_lab.task_mim import MIMConfig
    return MIMConfig(model=a.model, img_size=a.img_size)


def train_step(net, tokenizer, opt, batch, dev, precision: str, cfg) -> torch.Tensor:
    "One MIM step as in `train.fit`: the task's step (targets + student forward) under autocast, backward, AdamW."
    from beitv2_lab.task_mim import MIMTask
    return task_step(MIMTask(), net, dict(tokenizer=tokenizer), opt, batch, dev, precision, cfg)


def step_worker(a) -> dict:
    "Warmup, one peak-memory step, `repeats` timed steps of configuration `a.worker`, in this fresh process."
    precision, compile_, sdpa = CONFIGS[a.worker]
    dev = torch.device(a.device)
    tokenizer, model, opt, batch = build(a, dev, a.batch_size, sdpa)
    cfg = run_config(a)
    train_step(model, tokenizer, opt, batch, dev, precision, cfg)                    # eager, as fit's first step
    net = compile_model(model, a.compile_backend) if compile_ else model
    return measure(lambda: train_step(net, tokenizer, opt, batch, dev, precision, cfg), dev, a.warmup, a.repeats)


def flop_worker(a) -> dict:
    "FLOPs of one eager fp32 step at B=`a.flop_batch`: tokenizer forward and total, SDPA off and on."
    from beitv2_lab.mim import mim_targets
    dev, out = torch.device(a.device), {}
    for sdpa in (False, True):
        tokenizer, model, opt, batch = build(a, dev, a.flop_batch, sdpa)
        tok = count_flops(lambda: mim_targets(tokenizer, batch['tok_image'], batch['bool_masked_pos']))
        total = count_flops(lambda: train_step(model, tokenizer, opt, batch, dev, 'fp32', run_config(a)))
        out['sdpa' if sdpa else 'matmul'] = dict(total=total / a.flop_batch, tokenizer=tok / a.flop_batch)
    return out


WORKER_KEYS = ('device', 'model', 'tokenizer', 'img_size', 'batch_size', 'flop_batch', 'repeats', 'warmup', 'threads',
               'compile_backend')


def worker(a) -> dict:
    "This process as a worker: `flop_worker` (a.worker == 'flops') or `step_worker` (a config name)."
    return flop_worker(a) if a.worker == 'flops' else step_worker(a)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', help='MIM variant (default: beitv2_tiny_patch16_224 on CPU, beitv2_base_patch16_224 on CUDA)')
    p.add_argument('--tokenizer', help='tokenizer variant (default: vqkd_tiny on CPU, vqkd_base on CUDA)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-size', type=int, help='B of a timed step (default: 32 on CPU, 64 on CUDA)')
    p.add_argument('--configs', help=f'comma list from {list(CONFIGS)}; the first is the baseline')
    add_run_args(p)
    a = finish_args(p, p.parse_args(argv), DEFAULTS, ('img_size', 'batch_size', 'flop_batch', 'repeats', 'warmup'))
    bad = [c for c in a.configs.split(',') if c not in CONFIGS]
    if bad: p.error(f'--configs: unknown {bad}; choose from {list(CONFIGS)}')
    if a.img_size % 16: p.error(f'--img-size must be a multiple of the patch size 16, got {a.img_size}')
    return a


def main():
    a = parse_args()
    if (dev := serve(a, worker)) is None: return
    names, where = a.configs.split(','), env_info(dev)['device_name']
    print(f'one MIM step (tokenizer fwd no-grad + student fwd + bwd + AdamW): {a.model} + {a.tokenizer}, '
          f'img {a.img_size}, B={a.batch_size}, torch {torch.__version__}, {where}; time: median of {a.repeats} '
          f'steps after {a.warmup} warmup, '
          + ('all in this process (--inline)' if a.inline else 'each config in a fresh process'))
    fl = run_worker(__file__, a, 'flops', WORKER_KEYS, worker, a.timeout)
    if 'error' in fl: print(f'FLOP count {fl["error"]}'); flops = None
    else:
        m, s = fl['matmul'], fl['sdpa']
        flops = m['total']
        print(f"FLOPs/image (FlopCounterMode, B={a.flop_batch}): {flops / 1e9:.2f} GFLOP "
              f"(tokenizer fwd {m['tokenizer'] / 1e9:.2f}, student fwd+bwd {(flops - m['tokenizer']) / 1e9:.2f}); "
              f"with SDPA on the counter sees {s['total'] / 1e9:.2f}")
    res = {}
    publish = lambda: emit('mim_step', **env_info(dev), planned=names, model=a.model, tokenizer=a.tokenizer,
                           img_size=a.img_size, batch_size=a.batch_size, flops_per_image=flops,
                           peak_tflops=a.peak_tflops, inline=a.inline,
                           configs={n: {k: v for k, v in r.items() if k != 'times'} for n, r in res.items()})
    publish()                                          # and again after each config: a killed run keeps what it measured
    for name in names:
        compiled = CONFIGS[name][1]
        r = res[name] = run_worker(__file__, a, name, WORKER_KEYS, worker,
                                   a.timeout + (a.compile_timeout if compiled else 0))
        if 'error' in r: print(f'{name:20s} {r["error"]}')
        else: print(step_row(name, r, res[names[0]], a.batch_size, flops, a.peak_tflops, dev))
        publish()
    if dev.type == 'cuda': print(f'MFU peak: --peak-tflops {a.peak_tflops:g} (default 989 = H100 SXM dense bf16)')


if __name__ == '__main__':
    main()
