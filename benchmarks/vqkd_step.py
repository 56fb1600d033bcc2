"""Images/s, peak memory and FLOPs of ONE VQ-KD tokenizer training step per configuration, and of `encode`, in one run.

A step = `task_vqkd.VQKDTask.step` (frozen teacher forward under no grad for the targets; tokenizer forward: encoder,
EMA codebook assignment and update, decoder, cosine loss) under the harness's `autocast_ctx`, then backward and an
AdamW step (`train.build_optimizer`, the run defaults of `VQKDConfig`), on random images in [0, 1], as in
`train.fit` minus data loading and gradient clipping. Model, teacher and codebook come from `VQKDTask.build`, as in a
run (dead-code restarts included).

Configurations (ratios are against the first one): fp32 eager (baseline), bf16 autocast eager, bf16 with
`torch.compile` on the tokenizer (what `RunConfig.compile` compiles; the teacher stays eager).
- CPU default: `vqkd_tiny` + `efficientnet_lite0` (the package's offline ImageNet weights), img 224, B=16.
- CUDA default: `vqkd_base` + `timm:vit_base_patch16_224` with RANDOM weights (needs no network or weight file and
  costs what the official CLIP-B/16 teacher costs: a ViT-B/16 forward at 224; its features are 768-d, so the
  decoder's output layer is 768 wide instead of CLIP's 512), img 224, B=64; `encode` at B=256.
`--teacher-weights ''` uses a teacher's default weights (efficientnet_lite0: the package file; others: the hub).

Also `encode`: the tokenizer's `encode` (no grad, eval; bf16 autocast where `--encode-precision auto` resolves to
bf16: CUDA with bf16, or a CPU with AMX) at B=`--encode-batch`, images/s and peak memory, in its own process.

Method (as benchmarks/mim_step.py, helpers in benchmarks/_bench.py): each configuration in a fresh subprocess;
`--warmup` steps (the first one's time is printed: the compile time of compiled configs), one step for peak memory
(CUDA: `max_memory_allocated`, absolute; CPU: VmHWM - RSS before the step), then the median of `--repeats` timed
steps. FLOPs: `FlopCounterMode` over one eager fp32 step at B=`--flop-batch` (teacher forward + tokenizer forward and
backward; AdamW not counted), and over `encode`; MFU (CUDA) = FLOPs/image x img/s / `--peak-tflops` (default 989:
H100 SXM dense bf16). `--inline` runs everything in this process (CPU smoke runs). After each configuration a
line `RESULT {json}` (all so far) is printed; benchmarks/gpu_check.sh reads the last.

Usage:
    python benchmarks/vqkd_step.py                        # CUDA if available, else CPU, defaults above
    python benchmarks/vqkd_step.py --device cpu --batch-size 8 --repeats 3 --configs fp32,bf16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (add_run_args, compile_model, count_flops, emit, env_info, finish_args,  # noqa: E402
                    measure, run_worker, serve, step_row, task_step)

CONFIGS = {'fp32': ('fp32', False), 'bf16': ('bf16', False), 'fp32-compile': ('fp32', True),
           'bf16-compile': ('bf16', True)}   # name -> (precision, compile the tokenizer)
DEFAULTS = {'cpu': dict(model='vqkd_tiny', teacher='efficientnet_lite0', teacher_weights='', batch_size=16,
                        encode_batch=32),
            'cuda': dict(model='vqkd_base', teacher='timm:vit_base_patch16_224', teacher_weights='random',
                         batch_size=64, encode_batch=256)}
WORKER_KEYS = ('device', 'model', 'teacher', 'teacher_weights', 'img_size', 'teacher_size', 'batch_size',
               'encode_batch', 'encode_precision', 'flop_batch', 'repeats', 'warmup', 'threads', 'compile_backend')


def build(a, dev: torch.device, batch_size: int):
    "`VQKDTask.build` (tokenizer + frozen teacher), AdamW as `train._setup` makes it, one random batch on `dev`."
    from beitv2_lab.task_vqkd import VQKDConfig, VQKDTask
    from beitv2_lab.train import build_optimizer
    cfg = VQKDConfig(model=a.model, teacher=a.teacher, teacher_weights=a.teacher_weights, img_size=a.img_size,
                     teacher_size=a.teacher_size, batch_size=batch_size, device=dev.type)
    torch.manual_seed(0)
    built = VQKDTask().build(cfg, dev); built.cfg = cfg
    opt = build_optimizer(built.model, cfg.lr, cfg.weight_decay, betas=(0.9, cfg.beta2))
    batch = dict(image=torch.rand(batch_size, 3, a.img_size, a.img_size, device=dev))   # TokenizerTransform: [0, 1]
    return built, opt, batch


def train_step(net, built, opt, batch, dev, precision: str) -> torch.Tensor:
    "One VQ-KD step: `VQKDTask.step` (teacher targets + tokenizer forward) under autocast, backward, AdamW."
    from beitv2_lab.task_vqkd import VQKDTask
    return task_step(VQKDTask(), net, built.frozen, opt, batch, dev, precision, built.cfg)


def make_encoder(a, dev: torch.device):
    "The tokenizer alone (no teacher), frozen, and a batch of `encode_batch` images in [0, 1]."
    from beitv2_lab.tokenizer import create_tokenizer
    torch.manual_seed(0)
    tok = create_tokenizer(a.model, img_size=a.img_size).to(dev).eval().requires_grad_(False)
    return tok, torch.rand(a.encode_batch, 3, a.img_size, a.img_size, device=dev)


def encode_call(tok, images, dev, precision: str):
    "`encode` under the harness's autocast; returns a finite tensor only if every id is a valid code."
    from beitv2_lab.train import autocast_ctx
    with autocast_ctx(dev, precision): ids = tok.encode(images)                      # tok_ids [B, N]
    return torch.where(((ids >= 0) & (ids < tok.codebook_size)).all(), 0., float('nan'))


def step_worker(a) -> dict:
    "Warmup, one peak-memory step, `repeats` timed steps of configuration `a.worker` ('encode': the encode pass)."
    from beitv2_lab.train import resolve_precision
    dev = torch.device(a.device)
    if a.worker == 'encode':
        tok, images = make_encoder(a, dev)
        precision = resolve_precision(a.encode_precision, dev)
        return dict(measure(lambda: encode_call(tok, images, dev, precision), dev, a.warmup, a.repeats),
                    precision=precision)
    precision, compile_ = CONFIGS[a.worker]
    built, opt, batch = build(a, dev, a.batch_size)
    train_step(built.model, built, opt, batch, dev, precision)                     # eager, as fit's first step: k-means init
    net = compile_model(built.model, a.compile_backend) if compile_ else built.model
    out = measure(lambda: train_step(net, built, opt, batch, dev, precision), dev, a.warmup, a.repeats)
    d = built.frozen['teacher'].describe()
    return dict(out, teacher={k: d[k] for k in ('name', 'input_size', 'out_dim')})


def worker(a) -> dict:
    "This process as a worker: `flop_worker` (a.worker == 'flops') or `step_worker`."
    return flop_worker(a) if a.worker == 'flops' else step_worker(a)


def flop_worker(a) -> dict:
    "FLOPs per image of one eager fp32 step at B=`a.flop_batch` (total and teacher forward), and of `encode`."
    dev = torch.device(a.device)
    built, opt, batch = build(a, dev, a.flop_batch)
    teacher = count_flops(lambda: built.frozen['teacher'](batch['image']))
    train_step(built.model, built, opt, batch, dev, 'fp32')                          # the k-means init step, not counted
    total = count_flops(lambda: train_step(built.model, built, opt, batch, dev, 'fp32'))
    tok, _ = make_encoder(a, dev)
    enc = count_flops(lambda: encode_call(tok, batch['image'], dev, 'fp32'))
    return dict(total=total / a.flop_batch, teacher=teacher / a.flop_batch, encode=enc / a.flop_batch)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', help='tokenizer variant (default: vqkd_tiny on CPU, vqkd_base on CUDA)')
    p.add_argument('--teacher', help='teacher name (default: efficientnet_lite0 on CPU, timm:vit_base_patch16_224 on CUDA)')
    p.add_argument('--teacher-weights', help="'random', a local file, or '' for the teacher's default weights "
                                             "(default: '' on CPU, 'random' on CUDA)")
    p.add_argument('--img-size', type=int, default=224, help='tokenizer input side (multiple of 16)')
    p.add_argument('--teacher-size', type=int, default=0, help="teacher input side (0: the teacher's own, 224)")
    p.add_argument('--batch-size', type=int, help='B of a training step (default: 16 on CPU, 64 on CUDA)')
    p.add_argument('--encode-batch', type=int, help='B of the encode pass (default: 32 on CPU, 256 on CUDA)')
    p.add_argument('--encode-precision', default='auto', choices=('auto', 'bf16', 'fp32'),
                   help="encode's autocast ('auto': bf16 on CUDA with bf16 / a CPU with AMX, else fp32)")
    p.add_argument('--configs', default='fp32,bf16,bf16-compile',
                   help=f'comma list from {list(CONFIGS)}, and/or "encode"; the first config is the baseline')
    add_run_args(p)
    a = finish_args(p, p.parse_args(argv), DEFAULTS,
                    ('img_size', 'batch_size', 'encode_batch', 'flop_batch', 'repeats', 'warmup'))
    bad = [c for c in a.configs.split(',') if c not in CONFIGS and c != 'encode']
    if bad: p.error(f'--configs: unknown {bad}; choose from {list(CONFIGS) + ["encode"]}')
    if a.img_size % 16: p.error(f'--img-size must be a multiple of the patch size 16, got {a.img_size}')
    if a.teacher_size < 0: p.error(f'--teacher-size must be >= 0, got {a.teacher_size}')
    if a.teacher_weights not in ('', 'random') and not Path(a.teacher_weights).is_file():
        p.error(f'--teacher-weights: file not found: {a.teacher_weights}')
    return a


def main():
    a = parse_args()
    if (dev := serve(a, worker)) is None: return
    names = a.configs.split(',')
    print(f'one VQ-KD step (teacher fwd no-grad + tokenizer fwd + bwd + AdamW): {a.model} + {a.teacher} '
          f'(weights {a.teacher_weights or "default"}), img {a.img_size}, B={a.batch_size}; encode B={a.encode_batch}; '
          f'{env_info(dev)["device_name"]}, torch {torch.__version__}; median of {a.repeats} after {a.warmup} warmup, '
          + ('all in this process (--inline)' if a.inline else 'each config in a fresh process'))
    fl = run_worker(__file__, a, 'flops', WORKER_KEYS, worker, a.timeout)
    if 'error' in fl: print(f'FLOP count {fl["error"]}')
    else: print(f"FLOPs/image (FlopCounterMode, B={a.flop_batch}): step {fl['total'] / 1e9:.2f} GFLOP (teacher fwd "
                f"{fl['teacher'] / 1e9:.2f}, tokenizer fwd+bwd {(fl['total'] - fl['teacher']) / 1e9:.2f}); "
                f"encode {fl['encode'] / 1e9:.2f} GFLOP")
    res, ref = {}, None
    publish = lambda: emit('vqkd_step', **env_info(dev), planned=names, model=a.model, teacher=a.teacher,
                           teacher_weights=a.teacher_weights or 'default', img_size=a.img_size, batch_size=a.batch_size,
                           encode_batch=a.encode_batch, peak_tflops=a.peak_tflops, inline=a.inline,
                           flops=None if 'error' in fl else fl,
                           configs={n: {k: v for k, v in r.items() if k != 'times'} for n, r in res.items()})
    publish()                                          # and again after each config: a killed run keeps what it measured
    for name in names:
        compiled = name != 'encode' and CONFIGS[name][1]
        r = res[name] = run_worker(__file__, a, name, WORKER_KEYS, worker,
                                   a.timeout + (a.compile_timeout if compiled else 0))
        if 'error' in r: print(f'{name:20s} {r["error"]}')
        elif name == 'encode':
            print(step_row(f"encode ({r['precision']})", r, None, a.encode_batch, fl.get('encode'), a.peak_tflops, dev))
        else:
            ref = ref or r
            print(step_row(name, r, ref, a.batch_size, fl.get('total'), a.peak_tflops, dev))
        publish()


if __name__ == '__main__':
    main()
