"""What the step benchmarks (mim_step.py, vqkd_step.py, ibot_step.py, quantizer.py) share: a worker per configuration
in a fresh subprocess (or inline, for CPU smoke runs), one training step on the harness, peak memory, timing, and the
machine-readable `RESULT {...}` line that benchmarks/gpu_check.sh collects into its table.

Also a command: `python benchmarks/_bench.py jpegs DIR N` writes N synthetic JPEG files (class folders) for the loader
benchmark where no image folder travels (a bare GPU machine).
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


def importable(name: str) -> bool:
    "Whether module `name` imports here (not just whether it is installed: a peer whose dependencies are missing is not)."
    import importlib
    try: importlib.import_module(name); return True
    except Exception: return False


def sync(dev):
    if torch.device(dev).type == 'cuda': torch.cuda.synchronize()


def rss_bytes() -> int:
    with open('/proc/self/statm') as f: return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def hwm_bytes() -> int:
    with open('/proc/self/status') as f: return next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmHWM'))


def reset_hwm():
    with open('/proc/self/clear_refs', 'w') as f: f.write('5')   # Linux >= 4.0: VmHWM := current RSS


def memory_note(m: dict) -> str:
    "The RSS and high-water mark a CPU memory worker started from (`rss_before`, `hwm_before`), if it recorded them."
    if 'rss_before' not in m: return ''
    return f"  [rss before {m['rss_before'] / 2**20:.0f} MiB, high-water before {m['hwm_before'] / 2**20:.0f} MiB]"


def task_step(task, net, frozen: dict, opt, batch: dict, dev, precision: str, cfg=None) -> torch.Tensor:
    """One step as `train._train_step` takes it (minus lr schedule and clipping): `task.step` under autocast, backward,
    AdamW; `cfg` is the run config the task's step may read (`Built.cfg`)."""
    from beitv2_lab.core import trusted_inputs
    from beitv2_lab.train import Built, autocast_ctx
    built = Built(model=net, frozen=frozen, net=net, device=dev, cfg=cfg)
    with trusted_inputs(), autocast_ctx(dev, precision): res = task.step(built, batch, 0)   # as the loop's steps after the first
    opt.zero_grad(set_to_none=True); res['loss'].backward(); opt.step()
    return res['loss'].detach()


def measure(step, dev, warmup: int, repeats: int) -> dict:
    """`warmup` untimed calls of `step() -> loss` (the first one's time kept: the compile time of compiled configs), ONE
    call for peak memory, then `repeats` timed calls. CUDA: absolute `max_memory_allocated` and the extra over the memory
    allocated before the call; CPU: VmHWM after the call - RSS before it (`extra_bytes`), and that RSS."""
    first = []
    for i in range(warmup):
        sync(dev); t = time.perf_counter(); loss = step(); sync(dev)
        if i == 0: first.append(time.perf_counter() - t)
    if not torch.isfinite(loss): raise FloatingPointError(f'non-finite loss {loss.item()}')
    if torch.device(dev).type == 'cuda':
        torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
        step(); sync(dev); peak = torch.cuda.max_memory_allocated()
        mem = dict(peak_bytes=peak, extra_bytes=peak - before)
    else:
        reset_hwm(); before = rss_bytes()
        step(); mem = dict(extra_bytes=hwm_bytes() - before, rss_before=before)
    times = []
    for _ in range(repeats):
        sync(dev); t = time.perf_counter(); step(); sync(dev); times.append(time.perf_counter() - t)
    syncs = cuda_syncs(step, dev)
    return dict(first_step_s=first[0], times=times, loss=loss.item(), **mem, **({} if syncs is None else dict(cuda_syncs=syncs)))


def cuda_syncs(step, dev) -> int | None:
    """Synchronising CUDA calls in one more call of `step`, as CUDA's own sync debug mode reports them (the GPU side of
    the tests' `core.HostSyncs`); None off CUDA."""
    if torch.device(dev).type != 'cuda': return None
    import warnings
    sync(dev)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        torch.cuda.set_sync_debug_mode('warn')
        try: step()
        finally: torch.cuda.set_sync_debug_mode('default')
    sync(dev)
    return sum('synchroniz' in str(w.message) for w in caught)


def compile_model(model, backend: str = 'inductor'):
    """`torch.compile(model)` as `train._setup` does it (the step workers first run one eager step, as `train.fit`
    runs its first step eager and compiles from the second: a VQ-KD codebook is initialised by then). `backend='aot_eager'` traces the same graphs (dynamo + AOT
    autograd, graph breaks and all) but generates no code: the CPU smoke run's stand-in, as inductor takes minutes there."""
    return torch.compile(model) if backend == 'inductor' else torch.compile(model, backend=backend)


def step_row(name: str, r: dict, ref: dict | None, batch: int, flops: float | None, peak_tflops: float, dev) -> str:
    """A printed row of a `measure` result `r` (B=`batch`); adds `ips`, and with `flops` (per image) `tflops` and, on
    CUDA, `mfu` (of `peak_tflops`) to `r`. Ratios are against `ref` (the baseline's result; None or `r`: none)."""
    r['ips'] = batch / statistics.median(r['times'])
    cuda = torch.device(dev).type == 'cuda'
    if cuda: mem = f"max_allocated {r['peak_bytes'] / 2**30:6.2f} GiB (step extra {r['extra_bytes'] / 2**30:.2f})"
    else: mem = f"peak extra {r['extra_bytes'] / 2**20:7.0f} MiB (rss before {r['rss_before'] / 2**20:.0f})"
    perf = ''
    if flops:
        r['tflops'] = flops * r['ips'] / 1e12; perf = f"{r['tflops']:.3f} TFLOP/s"
        if cuda: r['mfu'] = r['tflops'] / peak_tflops; perf += f", MFU {r['mfu']:.1%} of {peak_tflops:g}"
    mk = 'peak_bytes' if cuda else 'extra_bytes'
    ratio = (f"x{r['ips'] / ref['ips']:.2f} speed, x{r[mk] / max(ref[mk], 1):.2f} mem"
             if ref is not None and ref is not r and 'ips' in ref else '')
    return (f"{name:20s} {r['ips']:8.1f} img/s [{batch / max(r['times']):.1f}-{batch / min(r['times']):.1f}]  {mem}  "
            f"{perf}  first step {r['first_step_s']:.1f} s  {ratio}")


def count_flops(fn) -> int:
    "FLOPs `torch.utils.flop_counter.FlopCounterMode` counts while `fn()` runs (matmuls, convolutions, attention)."
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc: fn()
    return fc.get_total_flops()


def worker_argv(a, kind: str, keys) -> list[str]:
    "The command-line flags that rebuild `a` (its `keys`) in a worker running configuration `kind`."
    return ['--worker', kind] + [f'--{k.replace("_", "-")}={getattr(a, k)}' for k in keys]


def run_worker(script, a, kind: str, keys, worker, timeout: float | None = None) -> dict:
    """`worker(args)` for configuration `kind`: in a fresh subprocess running `script --worker kind` (the default), or
    in this process when `a.inline` (CPU smoke runs, where a process start costs more than the benchmark; no timeout).
    Returns the worker's dict + `wall_s`, or `{'error': ...}` on failure / timeout, so a benchmark goes on."""
    t = time.perf_counter()
    if getattr(a, 'inline', False):
        try: out = json.loads(json.dumps(worker(argparse.Namespace(**{**vars(a), 'worker': kind}))))
        except Exception as e: return dict(error=f'failed: {type(e).__name__}: {e}'[:300])
        return dict(out, wall_s=time.perf_counter() - t)
    cmd = [sys.executable, str(script)] + worker_argv(a, kind, keys)
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(REPO), os.environ.get('PYTHONPATH', '')])}
    try: out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired: return dict(error=f'timed out after {timeout:.0f} s (killed)')
    if out.returncode:
        return dict(error=f'failed (exit {out.returncode}): ' + ' | '.join(out.stderr.strip().splitlines()[-3:]))
    return dict(json.loads(out.stdout.strip().splitlines()[-1]), wall_s=time.perf_counter() - t)


def add_run_args(p: argparse.ArgumentParser, timeout: float = 300., flops: bool = True):
    """The flags every step benchmark shares: device, repeats, warmup, threads, timeout, --inline, --worker (internal:
    this process is a worker); with `flops`, also the FLOP-count batch, the MFU peak and the compiled configs' flags."""
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda'), help='auto: cuda if available')
    p.add_argument('--repeats', type=int, default=5, help='timed steps per configuration')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps first (the first compiles, if compiled)')
    p.add_argument('--threads', type=int, default=0, help='torch threads per worker (0: torch default)')
    p.add_argument('--timeout', type=float, default=timeout, help='seconds before a worker is killed')
    if flops:
        p.add_argument('--flop-batch', type=int, default=2, help='B of the FLOP-counting step')
        p.add_argument('--peak-tflops', type=float, default=989.,
                       help='card peak dense bf16 TFLOP/s for MFU (default: H100 / H200 SXM)')
        p.add_argument('--compile-timeout', type=float, default=180.,
                       help='extra seconds a compiled configuration may take')
        p.add_argument('--compile-backend', default='inductor', choices=('inductor', 'aot_eager', 'eager'),
                       help="torch.compile backend of compiled configs ('aot_eager': same tracing, no code generation)")
    p.add_argument('--inline', action='store_true',
                   help='run every configuration in this process, not a fresh subprocess (quick CPU smoke runs; '
                        'memory and compile figures then share one process)')
    p.add_argument('--worker', help=argparse.SUPPRESS)


def finish_args(p: argparse.ArgumentParser, a, defaults: dict, positive: tuple):
    """Resolve `--device auto`, fill the unset flags from `defaults[device]`, check that the `positive` ones are >= 1
    (a parser error names the flag). Returns `a`."""
    if a.device == 'auto': a.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if a.device == 'cuda' and not torch.cuda.is_available(): p.error('--device cuda: no CUDA device here')
    for k, v in defaults[a.device].items():
        if getattr(a, k) is None: setattr(a, k, v)
    for k in positive:
        if getattr(a, k) < 1: p.error(f'--{k.replace("_", "-")} must be >= 1, got {getattr(a, k)}')
    return a


def serve(a, worker) -> torch.device | None:
    """Set `a.threads` torch threads (0: torch's default). In a worker process (`--worker KIND`): print `worker(a)` as
    one JSON line and return None; in the parent: return the device the benchmark runs on."""
    if a.threads: torch.set_num_threads(a.threads)
    if a.worker: print(json.dumps(worker(a))); return None
    return torch.device(a.device)


def env_info(dev) -> dict:
    "Versions and device name for a RESULT line."
    dev = torch.device(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    return dict(torch=torch.__version__, cuda=torch.version.cuda, device=dev.type, device_name=name)


def emit(bench: str, **fields):
    "Print the benchmark's machine-readable line: `RESULT {\"bench\": ..., ...}` (JSON, one line, printed last)."
    print('RESULT ' + json.dumps(dict(bench=bench, **fields), default=str), flush=True)


def write_jpegs(root: Path, n: int, seed: int = 0, unique: int = 128) -> Path:
    """`n` synthetic JPEGs in 4 class folders under `root`, ImageNet-like (short side 224-375, smooth content + noise):
    `unique` drawn ones, the rest copies of them (decoding costs the same; writing stays quick)."""
    import shutil
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    files = []
    for i in range(n):
        d = root/f'class_{i % 4}'; d.mkdir(parents=True, exist_ok=True)
        files.append(d/f'img_{i:05d}.jpg')
        if i >= unique: shutil.copyfile(files[i % unique], files[i]); continue
        h = int(torch.randint(224, 376, (), generator=g))
        w = int(h * float(torch.empty(()).uniform_(1.0, 1.5, generator=g)))
        low = torch.rand(3, 6, 8, generator=g)[None]                                    # coarse colour layout
        x = torch.nn.functional.interpolate(low, size=(h, w), mode='bicubic', align_corners=False)[0]
        x = (x + 0.08 * torch.randn(3, h, w, generator=g)).clamp(0, 1)                  # texture: files not trivial
        Image.fromarray((x * 255).byte().permute(1, 2, 0).numpy()).save(files[i], quality=90)
    return root


if __name__ == '__main__':
    p = argparse.ArgumentParser(description='benchmark helpers')
    sub = p.add_subparsers(dest='cmd', required=True)
    j = sub.add_parser('jpegs', help='write N synthetic JPEGs (class folders) under DIR')
    j.add_argument('dir'); j.add_argument('n', type=int)
    a = p.parse_args()
    if a.n < 1: p.error(f'n must be >= 1, got {a.n}')
    print(write_jpegs(Path(a.dir), a.n))
