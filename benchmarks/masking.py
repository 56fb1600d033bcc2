"""Masks per second: batched `block_masks` (BEiT v2) vs the per-image `block_mask_reference` loop.

Both run in the same process on the same settings (plus `MaskGenerator.sample`, one image per call). The figures
are printed for the process's default torch thread count and for `torch.set_num_threads(1)` (masks are usually drawn
in DataLoader workers, one thread each); `block_masks` itself runs on one intra-op thread either way.

    python benchmarks/masking.py                      # B=256, 14x14 grid, 75 patches
    python benchmarks/masking.py --grid 8 20 --num-masking-patches 64 --v1
"""
import argparse
import random
import statistics
import time

import torch

from beitv2_lab.masking import MaskGenerator, block_mask_reference, block_masks


def masks_per_second(fn, batch_size: int, repeats: int, warmup: int = 2) -> float:
    "Median over `repeats` timed calls of `fn()` (each makes `batch_size` masks), as masks per second."
    for _ in range(warmup): fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); fn(); times.append(time.perf_counter() - t)
    return batch_size / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--batch-size', type=int, default=256, help='masks per call (B)')
    p.add_argument('--grid', type=int, nargs=2, default=(14, 14), metavar=('H', 'W'), help='patch grid')
    p.add_argument('--num-masking-patches', type=int, default=75, help='patches to mask per image')
    p.add_argument('--min-num-patches', type=int, default=16, help='smallest target block area')
    p.add_argument('--v1', action='store_true', help='BEiT v1 (at most the count, no fix-up) instead of v2')
    p.add_argument('--repeats', type=int, default=20, help='timed calls of the batched version')
    p.add_argument('--ref-repeats', type=int, default=5, help='timed calls of the per-image reference loop')
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    kw = dict(grid=tuple(a.grid), num_masking_patches=a.num_masking_patches, min_num_patches=a.min_num_patches,
              exact=not a.v1)
    g, rng = torch.Generator().manual_seed(a.seed), random.Random(a.seed)
    batched = lambda: block_masks(a.batch_size, generator=g, **kw)
    reference = lambda: [block_mask_reference(rng=rng, **kw) for _ in range(a.batch_size)]
    gen = MaskGenerator('v1' if a.v1 else 'v2', kw['grid'], a.num_masking_patches, min_num_patches=a.min_num_patches)
    per_sample = lambda: [gen.sample(g) for _ in range(a.batch_size)]   # what a Dataset.__getitem__ would call
    print(f"block masks {'v1' if a.v1 else 'v2'}: B={a.batch_size}, grid={tuple(a.grid)}, "
          f"{a.num_masking_patches} patches, min block {a.min_num_patches}")
    for threads in (torch.get_num_threads(), 1):
        torch.set_num_threads(threads)
        fast = masks_per_second(batched, a.batch_size, a.repeats)
        slow = masks_per_second(reference, a.batch_size, a.ref_repeats)
        one = masks_per_second(per_sample, a.batch_size, a.ref_repeats)
        print(f'threads={threads}: block_masks {fast:,.0f} masks/s | block_mask_reference loop {slow:,.0f} masks/s'
              f' | ratio {fast / slow:.1f}x | MaskGenerator.sample loop {one:,.0f} masks/s')


if __name__ == '__main__':
    main()
