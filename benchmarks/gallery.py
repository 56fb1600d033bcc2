"""The code gallery's streaming pass (`beitv2_lab.gallery.build_gallery`) vs the tokenizer's own `encode`, same data,
same run.

Both passes read the same dataset through the same DataLoader settings (`collate`, batch size, workers):
- encode:  `tokenizer.encode(batch)` for every batch (the peer: the cost of any use of the tokenizer);
- gallery: `build_gallery(...)` (encoder + nearest code, plus usage, label histogram, top-k merge and crops).
Printed: images/s of each, the ratio gallery_time / encode_time (issue 5's target: <= 1.20), and the gallery's own
split of its time (waiting for data, encoding, bookkeeping). With `--repeats R` the two passes alternate R times
(encode first) and the medians are compared.

Data: Imagenette's train folder (9469 images), indices wrapped modulo its length to reach `--n-images`, resized
(short side) and center-cropped to `--img-size`, pixels in [0, 1].
Tokenizer: `--tokenizer PATH` (a `save_tokenizer` file, loaded at `--img-size`), else `vqkd_tiny` with random
weights whose codebook is placed by cosine k-means on the encoder outputs of one real batch (said in the output).

Usage: python benchmarks/gallery.py [--n-images 10000 --img-size 224 --batch-size 64 --num-workers 2 --top-k 8
                                     --context 4 --tokenizer PATH --repeats 1 --device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset

from beitv2_lab.codebook import kmeans_cosine
from beitv2_lab.core import l2norm
from beitv2_lab.data import EvalTransform, ImageFolder, collate
from beitv2_lab.gallery import build_gallery
from beitv2_lab.test_utils import imagenette_path
from beitv2_lab.tokenizer import create_tokenizer, load_tokenizer


class Cycle(Dataset):
    "`n` items of `base`, wrapping around its end."
    def __init__(self, base, n: int): self.base, self.n, self.classes, self.root = base, n, base.classes, base.root
    def __len__(self): return self.n
    def __getitem__(self, i): return self.base[i % len(self.base)]


def sync(device):
    if torch.device(device).type == 'cuda': torch.cuda.synchronize(device)


def make_tokenizer(args, ds) -> tuple:
    "The tokenizer and a line saying where it comes from."
    if args.tokenizer:
        return load_tokenizer(args.tokenizer, device=args.device, img_size=args.img_size), f'{args.tokenizer} at {args.img_size} px'
    torch.manual_seed(0)
    tok = create_tokenizer('vqkd_tiny', img_size=args.img_size).eval().requires_grad_(False)
    x = collate([ds[i] for i in range(min(args.batch_size, len(ds)))])['image']
    with torch.no_grad():
        z = l2norm(tok.forward_encoder(x)).flatten(0, 1)                     # [B*N, C]
        centroids, _ = kmeans_cosine(z, tok.codebook_size, iters=10)
        tok.quantize.embedding.weight.copy_(centroids)
    return tok.to(args.device), (f'vqkd_tiny, random weights; codebook (K={tok.codebook_size}) placed by cosine k-means '
                                 f'(10 iters) on the encoder outputs of one real batch ({len(x)} images, {len(z)} vectors)')


@torch.no_grad()
def encode_pass(tok, ds, args) -> tuple[float, float, int]:
    "Wall seconds, CPU seconds of this process, and images of `encode` over the whole dataset."
    t0, c0, n = time.perf_counter(), time.process_time(), 0
    for b in DataLoader(ds, args.batch_size, num_workers=args.num_workers, collate_fn=collate):
        if 'image' in b: tok.encode(b['image'].to(args.device)); n += len(b['image'])
    sync(args.device)
    return time.perf_counter() - t0, time.process_time() - c0, n


def gallery_pass(tok, ds, args):
    t0, c0 = time.perf_counter(), time.process_time()
    gal = build_gallery(tok, ds, top_k=args.top_k, context=args.context, batch_size=args.batch_size,
                        num_workers=args.num_workers, device=args.device, progress=False)
    return time.perf_counter() - t0, time.process_time() - c0, gal


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n-images', type=int, default=10_000, help='images per pass (Imagenette train wrapped around)')
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--num-workers', type=int, default=2)
    ap.add_argument('--top-k', type=int, default=8)
    ap.add_argument('--context', type=int, default=4)
    ap.add_argument('--tokenizer', default=None, help='a save_tokenizer file; default: vqkd_tiny with a k-means codebook')
    ap.add_argument('--repeats', type=int, default=1, help='alternate encode / gallery passes this many times')
    ap.add_argument('--device', default='cpu')
    args = ap.parse_args()
    if args.n_images < 1 or args.repeats < 1: ap.error('--n-images and --repeats must be >= 1')

    base = ImageFolder(imagenette_path()/'train', EvalTransform(args.img_size, resize=args.img_size, mean=None))
    ds = Cycle(base, args.n_images)
    tok, how = make_tokenizer(args, base)
    print(f'data: {args.n_images} images from {base.root} ({len(base)} files, wrapped), {args.img_size} px, batch '
          f'{args.batch_size}, {args.num_workers} workers, {torch.get_num_threads()} torch threads, device {args.device}')
    print(f'tokenizer: {how}; grid {tok.grid}')
    enc, gal_t, enc_cpu, gal_cpu = [], [], [], []
    for r in range(args.repeats):
        t, c, n = encode_pass(tok, ds, args); enc.append(t); enc_cpu.append(c)
        print(f'[{r}] encode : {n} img in {t:.1f} s = {n / t:.1f} img/s (main process CPU {c:.1f} s)')
        t, c, gal = gallery_pass(tok, ds, args); gal_t.append(t); gal_cpu.append(c); tm = gal.meta['timing']
        print(f'[{r}] gallery: {gal.meta["n_images"]} img in {t:.1f} s = {gal.meta["n_images"] / t:.1f} img/s '
              f'(main process CPU {c:.1f} s; data wait {tm["load"]:.1f} s, encoder+nearest code {tm["encode"]:.1f} s, bookkeeping {tm["gallery"]:.2f} s '
              f'= {100 * tm["gallery"] / tm["encode"]:.1f}% of encoding)')
    e, g = statistics.median(enc), statistics.median(gal_t)
    print(f'encode : {args.n_images / e:.1f} img/s (median of {args.repeats})')
    print(f'gallery: {args.n_images / g:.1f} img/s (median of {args.repeats})')
    print(f'ratio gallery_time / encode_time = {g / e:.3f} (target <= 1.20); '
          f'CPU-time ratio (main process, robust to other load) = {statistics.median(gal_cpu) / statistics.median(enc_cpu):.3f}')
    print(f'gallery: utilisation {gal.utilisation:.1f}%, perplexity {gal.perplexity:.1f}, skipped {gal.meta["skipped"]}, '
          f'crop buffer {gal.crops.numel() / 2**20:.1f} MiB ({gal.codebook_size} codes x {gal.top_k})')


if __name__ == '__main__':
    main()
