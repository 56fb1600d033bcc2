"""One dVAE training step: `beitv2_lab.dvae.DiscreteVAE` (DALL-E's architecture) vs `dalle_pytorch.DiscreteVAE`
(lucidrains), at matching sizes, same run.

A step = `zero_grad` + forward with the Gumbel-softmax relaxation (temperature 1, soft sample) + loss + backward +
`AdamW.step()`. Ours: logit-Laplace NLL (or `--recon mse`) + KL to the uniform prior (β 6.6). Theirs: MSE + its KL
term (weight 6.6, so the term is in the graph).

'Same size' means: the same image size, the same K (`--codebook-size`), the same token grid (8× downsampling: our 4
groups with 3 max-pools, their `num_layers=3` stride-2 convs), their `codebook_dim` = our decoder `n_init` (both are
the code embedding: our decoder's 1×1 input conv on the one-hot is a lookup), their `num_resnet_blocks=2` (the
default of their `train_vae.py`) and their `hidden_dim` chosen (a multiple of 8) so that their total parameter count
is the closest to ours. The two architectures differ otherwise (ours: 7×7 stem, 4 widths, pre-activation bottleneck
blocks with post-gain at every resolution; theirs: one width, resblocks at the lowest resolution only), so equal
parameters do not mean equal FLOPs: both counts are printed. Ours keeps activations channels_last (NHWC) inside its
forward; theirs runs as shipped (NCHW) unless `--theirs-channels-last` hands it NHWC images.

Method (as benchmarks/quantizer.py)
- Peak memory: each implementation runs in its own **fresh subprocess**. CPU: one step at batch 1 first (loads the
  kernels and allocates the AdamW state), then the kernel's high-water mark is reset (`echo 5 > /proc/self/clear_refs`)
  and RSS (`/proc/self/statm`) read, ONE full-batch step is run, and peak = high-water mark
  `getrusage(RUSAGE_SELF).ru_maxrss` − RSS before the step: the extra resident memory the step needed at its worst
  moment (tracemalloc does not see torch's C++ allocations). Where the reset is not allowed, the high-water mark
  before the step is printed too: the figure is then sound only while it is close to the RSS before the step.
  CUDA: `torch.cuda.max_memory_allocated()` − memory allocated before the step.
- FLOPs: of one forward + backward at the full batch (`torch.utils.flop_counter.FlopCounterMode`), to show what the
  matched parameter counts mean in compute.
- Time: both implementations in one further subprocess, steps **interleaved** (order alternating each round), so a
  shared, noisy machine loads both equally: `--warmup` rounds, then the median (min/max) of `--repeats` timed steps.

The peer is `pip install --no-deps dalle-pytorch` (a benchmark peer only, no dependency of beitv2_lab: its
dependency youtokentome, a text tokenizer that DiscreteVAE does not use, does not build on Python 3.11; what its
import needs is in the dev requirements, and the README's install line adds it). Where it does not import, ours alone
is measured and the peer's row says why (exit 0).

Usage: python benchmarks/dvae.py [--variant dvae_small --batch-size 8 --img-size 128 --repeats 7 --device cpu]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]   # benchmark the working tree's beitv2_lab
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import memory_note, rss_bytes, sync  # noqa: E402
KL_WEIGHT = 6.6


def dalle_pytorch_vae():
    "`dalle_pytorch.DiscreteVAE`, importable with a current pytorch_lightning."
    for _ in range(3):                  # at most one alias per missing module below, then the import must succeed
        try:
            import dalle_pytorch
            return dalle_pytorch.DiscreteVAE
        except ModuleNotFoundError as e:
            if e.name == 'pytorch_lightning.utilities.distributed':
                # dalle_pytorch/__init__ imports taming-transformers (for VQGanVAE, unused here), which imports
                # `rank_zero_only` from a module that pytorch_lightning >= 2 moved to `utilities.rank_zero`: alias it.
                import pytorch_lightning.utilities.rank_zero as rank_zero
                sys.modules['pytorch_lightning.utilities.distributed'] = rank_zero
            elif e.name == 'pkg_resources':
                # its __init__ imports `get_distribution` (unused) from pkg_resources, which setuptools >= 81 removed
                import importlib.metadata, types
                sys.modules['pkg_resources'] = types.SimpleNamespace(get_distribution=importlib.metadata.distribution)
            else: raise SystemExit(f'{e}: pip install --no-deps dalle-pytorch (its import-time needs are dev requirements)')
    raise SystemExit('dalle_pytorch does not import')


def peer_missing() -> str:
    "Why `dalle_pytorch` cannot be measured here ('' when it imports)."
    try: dalle_pytorch_vae(); return ''
    except SystemExit as e: return str(e)
    except Exception as e: return f'dalle_pytorch does not import: {type(e).__name__}: {e}'


PEER_MISSING = peer_missing()
IMPLS = ('beitv2_lab',) + (() if PEER_MISSING else ('dalle_pytorch',))


def n_params(m) -> int: return sum(p.numel() for p in m.parameters())


def theirs_kwargs(ours, img_size: int) -> dict:
    "dalle_pytorch.DiscreteVAE arguments of the same size as `ours` at `img_size` (see the module docstring)."
    DVAE = dalle_pytorch_vae()
    base = dict(image_size=img_size, num_tokens=ours.codebook_size, codebook_dim=ours.config['n_init'], num_layers=3,
                num_resnet_blocks=2, temperature=1.0, straight_through=False, kl_div_loss_weight=KL_WEIGHT)
    target = n_params(ours)
    with torch.device('meta'):                                     # count parameters without allocating them
        count = lambda h: n_params(DVAE(**base, hidden_dim=h))
        best = min(range(8, 2049, 8), key=lambda h: abs(count(h) - target))
    return dict(base, hidden_dim=best)


def build(a, impl: str, dev):
    from beitv2_lab.dvae import create_dvae
    ours = create_dvae(a.variant, img_size=a.img_size, recon=a.recon,
                       **({'codebook_size': a.codebook_size} if a.codebook_size else {}))
    model = ours if impl == 'beitv2_lab' else dalle_pytorch_vae()(**theirs_kwargs(ours, a.img_size))
    model = model.to(dev).train()
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step(model, opt, images, impl: str):
    "zero_grad + Gumbel-relaxed forward + loss + backward + AdamW step."
    opt.zero_grad(set_to_none=True)
    loss = (model(images, temperature=1.0, kl_weight=KL_WEIGHT)['loss'] if impl == 'beitv2_lab'
            else model(images, return_loss=True, temp=1.0))
    loss.backward()
    opt.step()


def maxrss_bytes() -> int: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def reset_hwm() -> bool:
    "Reset this process's RSS high-water mark (Linux >= 4.0); False where not allowed."
    try:
        with open('/proc/self/clear_refs', 'w') as f: f.write('5')
        return True
    except OSError: return False


def fwd_bwd_flops(model, x, impl: str) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        loss = (model(x, temperature=1.0, kl_weight=KL_WEIGHT)['loss'] if impl == 'beitv2_lab'
                else model(x, return_loss=True, temp=1.0))
        loss.backward()
    return fc.get_total_flops()


def images(a, dev, b=None) -> torch.Tensor: return torch.rand(b or a.batch_size, 3, a.img_size, a.img_size, device=dev)


def feed(a, x, impl: str) -> torch.Tensor:
    "The batch as `impl` gets it: NHWC for theirs with `--theirs-channels-last` (ours converts inside its forward)."
    return x.contiguous(memory_format=torch.channels_last) if impl == 'dalle_pytorch' and a.theirs_channels_last else x


def mem_worker(a) -> dict:
    "Peak extra memory of ONE full-batch step of one implementation, in this fresh process."
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model, opt = build(a, a.worker, dev)
    step(model, opt, feed(a, images(a, dev, 1), a.worker), a.worker)   # kernels loaded, AdamW state allocated
    x = feed(a, images(a, dev), a.worker)
    if dev.type == 'cuda':
        sync(dev); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
        step(model, opt, x, a.worker); sync(dev)
        out = dict(peak_bytes=torch.cuda.max_memory_allocated() - before)
    else:
        reset = reset_hwm()
        before, hwm_before = rss_bytes(), maxrss_bytes()
        step(model, opt, x, a.worker)
        out = dict(peak_bytes=maxrss_bytes() - before, **({} if reset else dict(rss_before=before, hwm_before=hwm_before)))
    return dict(out, params=n_params(model), flops=fwd_bwd_flops(model, x, a.worker))


def time_worker(a) -> dict:
    "Both implementations in one process, steps interleaved (order alternating), so both see the same machine load."
    torch.manual_seed(0)
    dev = torch.device(a.device)
    built = {impl: build(a, impl, dev) for impl in IMPLS}
    x = images(a, dev)
    times = {impl: [] for impl in IMPLS}
    for r in range(a.warmup + a.repeats):
        for impl in (IMPLS if r % 2 == 0 else IMPLS[::-1]):
            sync(dev); t = time.perf_counter()
            step(*built[impl], feed(a, x, impl), impl)
            sync(dev)
            if r >= a.warmup: times[impl].append(time.perf_counter() - t)
    return times


def run_worker(a, kind: str) -> dict:
    "Run `mem_worker`/`time_worker` in a fresh subprocess; `kind` is an implementation name or 'time'."
    cmd = [sys.executable, __file__, '--worker', kind] + [
        f'--{k.replace("_", "-")}={getattr(a, k)}' for k in
        ('variant', 'batch_size', 'img_size', 'codebook_size', 'recon', 'repeats', 'warmup', 'threads', 'device')] + (
        ['--theirs-channels-last'] if a.theirs_channels_last else [])
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode: raise RuntimeError(f'worker {kind} on {a.device} failed:\n{out.stderr}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--variant', default='dvae_small', help='our named variant (beitv2_lab.dvae.list_dvae())')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=128, help='a power of 2 (dalle_pytorch requires it)')
    p.add_argument('--codebook-size', type=int, default=0, help='K (0: the variant\'s)')
    p.add_argument('--recon', default='logit_laplace', choices=('logit_laplace', 'mse'), help='our reconstruction loss')
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--threads', type=int, default=0, help='torch threads per worker (0: torch default)')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--theirs-channels-last', action='store_true', help='feed dalle_pytorch NHWC images')
    p.add_argument('--worker', choices=('beitv2_lab', 'dalle_pytorch', 'time'), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.img_size < 8 or a.img_size & (a.img_size - 1): p.error(f'--img-size must be a power of 2 >= 8, got {a.img_size}')
    if a.batch_size < 1 or a.repeats < 1: p.error('--batch-size and --repeats must be >= 1')
    if a.device.startswith('cuda') and not torch.cuda.is_available(): p.error('--device cuda: no CUDA device here')
    if a.threads: torch.set_num_threads(a.threads)
    if a.worker:
        print(json.dumps(time_worker(a) if a.worker == 'time' else mem_worker(a))); return
    from beitv2_lab.dvae import create_dvae
    with torch.device('meta'):
        ours = create_dvae(a.variant, img_size=a.img_size, **({'codebook_size': a.codebook_size} if a.codebook_size else {}))
    tk = {} if PEER_MISSING else theirs_kwargs(ours, a.img_size)
    print(f'one dVAE training step (zero_grad + Gumbel-relaxed forward, tau 1 + loss + backward + AdamW), '
          f'batch {a.batch_size} x {a.img_size}px, K={ours.codebook_size}, grid {ours.grid[0]}x{ours.grid[1]} '
          f'(img {a.img_size}/8), device {a.device}, torch {torch.__version__}, '
          f'{a.threads or torch.get_num_threads()} threads; time: median of {a.repeats} interleaved steps after '
          f'{a.warmup} warmup; peak: extra memory of one step in a fresh process')
    if not PEER_MISSING:
        print(f"same size: ours {a.variant} (n_hid {ours.config['n_hid']}, {ours.config['n_blk_per_group']} block(s)/group, "
              f"n_init {ours.config['n_init']}, recon {a.recon}); theirs DiscreteVAE(num_layers=3, num_resnet_blocks=2, "
              f"codebook_dim={tk['codebook_dim']}, hidden_dim={tk['hidden_dim']}: the closest parameter count, MSE, "
              f"{'NHWC' if a.theirs_channels_last else 'NCHW'} input)")
    mem = {impl: run_worker(a, impl) for impl in IMPLS}
    times = run_worker(a, 'time')
    for impl in IMPLS:
        m, t = mem[impl], times[impl]
        print(f"{impl:14s} {m['params'] / 1e6:7.2f}M params {m['flops'] / 1e9:7.2f} GFLOP/step  {statistics.median(t) * 1e3:8.1f} ms "
              f"(min {min(t) * 1e3:.1f}, max {max(t) * 1e3:.1f})   peak {m['peak_bytes'] / 2**20:8.1f} MiB{memory_note(m)}")
    if PEER_MISSING:
        print(f"{'dalle_pytorch':14s} n/a (not installed: {PEER_MISSING.splitlines()[0]}): ours only"); return
    ours_t, ref_t = (statistics.median(times[i]) for i in IMPLS)
    print(f"ratio ours/theirs: step time {ours_t / ref_t:.2f}x, peak memory "
          f"{mem['beitv2_lab']['peak_bytes'] / mem['dalle_pytorch']['peak_bytes']:.2f}x, "
          f"parameters {mem['beitv2_lab']['params'] / mem['dalle_pytorch']['params']:.3f}x, "
          f"FLOPs {mem['beitv2_lab']['flops'] / mem['dalle_pytorch']['flops']:.2f}x")


if __name__ == '__main__':
    main()
