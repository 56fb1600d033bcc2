"""One training step of the VQ-KD quantizer: `beitv2_lab.codebook.NormEMAVectorQuantizer` vs
`vector_quantize_pytorch.VectorQuantize` (EMA cosine-sim codebook), same sizes, same run.

A step = forward in training mode (assignment + EMA update of the codebook) + backward of `z_q.sum() + loss`, with
z [B, N, C] requiring grad, as inside a tokenizer's training step.

Method
- Peak memory: each (implementation, device) pair runs in its own **fresh subprocess**, so allocator caches, kernel
  caches and the process high-water mark of one never leak into the other.
- Time: both implementations in one further subprocess, steps **interleaved** (order alternating each round), so a
  shared, noisy machine loads both equally: `--warmup` rounds, then the median (and min/max) of `--repeats` timed
  steps each (`time.perf_counter`, CUDA synchronised).
- Peak memory, CPU: the worker first runs one step on a tiny input (loads the kernels at negligible memory), then
  reads its current RSS (`/proc/self/statm`), runs ONE full-size step and reads the kernel's high-water mark
  VmHWM (`/proc/self/status`; `getrusage`'s ru_maxrss would start at the size of the parent it was forked from);
  peak = high-water mark - RSS before the step, i.e. the extra resident memory the step needed at its worst moment. (tracemalloc does not see torch's C++ allocations; the PyTorch CPU allocator
  does not cache, so freed large blocks leave RSS and the high-water mark is the true peak.) The pre-step
  high-water mark is printed too: the measurement is sound only while it is close to the pre-step RSS.
- Peak memory, CUDA: `torch.cuda.max_memory_allocated()` - memory allocated before the step (after
  `reset_peak_memory_stats`).
- `--inline` runs the workers in this process (CPU smoke runs; the high-water mark is reset before the step then);
  without vector_quantize_pytorch installed, ours alone is measured. Last line: `RESULT {json}` (benchmarks/_bench.py).

Usage: python benchmarks/quantizer.py [--batch 64 --patches 196 --codebook-size 8192 --code-dim 32 --repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import emit, env_info, hwm_bytes, importable, memory_note, reset_hwm, rss_bytes, run_worker, serve   # noqa: E402

PEER = 'vector_quantize_pytorch'
IMPLS = ('beitv2_lab',) + ((PEER,) if importable(PEER) else ())   # the peer only where it imports


def build(impl: str, k: int, c: int, chunk_size: int):
    if impl == 'beitv2_lab':
        from beitv2_lab.codebook import NormEMAVectorQuantizer
        return NormEMAVectorQuantizer(codebook_size=k, code_dim=c, decay=0.99, kmeans_init=False, chunk_size=chunk_size)
    from vector_quantize_pytorch import VectorQuantize
    return VectorQuantize(dim=c, codebook_size=k, decay=0.99, use_cosine_sim=True, kmeans_init=False,
                          commitment_weight=1.0, rotation_trick=False, sync_codebook=False)


def step(q, z: torch.Tensor, impl: str):
    "Forward in training mode (EMA update inside) + backward through the straight-through estimator."
    out = q(z)   # beitv2_lab: (z_q, loss, tok_ids); vector_quantize_pytorch: (z_q, indices, loss)
    z_q, loss = (out[0], out[1]) if impl == 'beitv2_lab' else (out[0], out[2])
    (z_q.sum() + loss).backward()


def new_z(a, dev, b=None, n=None) -> torch.Tensor:
    return torch.randn(b or a.batch, n or a.patches, a.code_dim, device=dev, requires_grad=True)


def mem_worker(a) -> dict:
    "Peak extra memory of ONE full-size step of one implementation, in this fresh process."
    torch.manual_seed(0)
    dev = torch.device(a.device)
    q = build(a.worker, a.codebook_size, a.code_dim, a.chunk_size).to(dev).train()
    step(q, new_z(a, dev, 1, 64), a.worker)                         # load kernels at negligible memory
    z = new_z(a, dev)
    if dev.type == 'cuda':
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
        step(q, z, a.worker); torch.cuda.synchronize()
        return dict(peak_bytes=torch.cuda.max_memory_allocated() - before)
    if a.inline: reset_hwm()                                        # this process ran other work before
    before, hwm_before = rss_bytes(), hwm_bytes()
    step(q, z, a.worker)
    return dict(peak_bytes=hwm_bytes() - before, rss_before=before, hwm_before=hwm_before)


def time_worker(a) -> dict:
    "Both implementations in one process, steps interleaved (order alternating), so both see the same machine load."
    torch.manual_seed(0)
    dev = torch.device(a.device)
    qs = {impl: build(impl, a.codebook_size, a.code_dim, a.chunk_size).to(dev).train() for impl in IMPLS}
    z = new_z(a, dev)
    times = {impl: [] for impl in IMPLS}
    for r in range(a.warmup + a.repeats):
        for impl in (IMPLS if r % 2 == 0 else IMPLS[::-1]):
            z.grad = None
            if dev.type == 'cuda': torch.cuda.synchronize()
            t = time.perf_counter(); step(qs[impl], z, impl)
            if dev.type == 'cuda': torch.cuda.synchronize()
            if r >= a.warmup: times[impl].append(time.perf_counter() - t)
    return times


WORKER_KEYS = ('device', 'batch', 'patches', 'codebook_size', 'code_dim', 'repeats', 'warmup', 'chunk_size', 'threads')


def worker(a) -> dict:
    "This process as a worker: `time_worker` (a.worker == 'time') or one implementation's `mem_worker`."
    return time_worker(a) if a.worker == 'time' else mem_worker(a)


def run(a, kind: str, device: str) -> dict:
    "Run `mem_worker`/`time_worker` in a fresh subprocess (or inline); `kind` is an implementation name or 'time'."
    r = run_worker(__file__, argparse.Namespace(**{**vars(a), 'device': device}), kind, WORKER_KEYS, worker)
    if 'error' in r: raise RuntimeError(f'worker {kind} on {device} {r["error"]}')
    r.pop('wall_s')
    return r


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--batch', type=int, default=64)
    p.add_argument('--patches', type=int, default=196)
    p.add_argument('--codebook-size', type=int, default=8192)
    p.add_argument('--code-dim', type=int, default=32)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--chunk-size', type=int, default=512, help='rows of the similarity matrix (beitv2_lab)')
    p.add_argument('--threads', type=int, default=0, help='torch threads per worker (0: torch default)')
    p.add_argument('--devices', default='cpu,cuda', help='comma list; cuda is skipped when unavailable')
    p.add_argument('--inline', action='store_true', help='run the workers in this process (quick CPU smoke runs)')
    p.add_argument('--device', default='cpu', help=argparse.SUPPRESS)
    p.add_argument('--worker', help=argparse.SUPPRESS)
    a = p.parse_args()
    if serve(a, worker) is None: return
    devices = [d for d in a.devices.split(',') if d != 'cuda' or torch.cuda.is_available()]
    print(f'one training step (forward in train mode incl. EMA update, + backward), K={a.codebook_size} '
          f'C={a.code_dim} N={a.batch}x{a.patches}={a.batch * a.patches}, torch {torch.__version__}, '
          f'{a.threads or torch.get_num_threads()} threads; time: median of {a.repeats} interleaved steps after '
          f'{a.warmup} warmup; peak: extra memory of one step in a fresh process')
    if 'cuda' not in devices: print('(no CUDA device here: CPU only)')
    if PEER not in IMPLS: print(f'{PEER} is not installed (pip install vector-quantize-pytorch): ours only')
    out = {}
    for dev in devices:
        mem = {impl: run(a, impl, dev) for impl in IMPLS}
        times = run(a, 'time', dev)
        out[dev] = {impl: dict(median_s=statistics.median(times[impl]), **mem[impl]) for impl in IMPLS}
        for impl in IMPLS:
            m, t = mem[impl], times[impl]
            print(f"{dev:4s} {impl:24s} {statistics.median(t) * 1e3:8.1f} ms (min {min(t) * 1e3:.1f}, "
                  f"max {max(t) * 1e3:.1f})   peak {m['peak_bytes'] / 2**20:8.1f} MiB{memory_note(m)}")
        if PEER not in IMPLS: continue
        ours, ref = IMPLS
        print(f"{dev:4s} speed-up {statistics.median(times[ref]) / statistics.median(times[ours]):.2f}x (target >= 3x)   "
              f"memory ratio {mem[ours]['peak_bytes'] / max(mem[ref]['peak_bytes'], 1):.3f} (target <= 0.1)")
    emit('quantizer', **env_info(devices[-1] if devices else 'cpu'), batch=a.batch, patches=a.patches, codebook_size=a.codebook_size,
         code_dim=a.code_dim, inline=a.inline, peer=PEER if PEER in IMPLS else f'{PEER} not installed', devices=out)


if __name__ == '__main__':
    main()
