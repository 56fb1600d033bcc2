"""Slower checks of `beitv2_lab.teachers` on real Imagenette images (about a minute each on 2 CPU cores).

- the offline EfficientNet-Lite0 is really pretrained (classifier top-1 on 300 images, both normalisations);
- the feature level it uses as targets (`blocks.6`) carries more per-patch semantics than the 1280-d `conv_head`:
  the image's class is predicted from one patch's l2-normalised feature by the cosine nearest class mean.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from beitv2_lab.teachers import TimmTeacher, build_teacher
from beitv2_lab.test_utils import imagenette_path


def _images(start: int, n: int):
    "Images `start:start+n` of each Imagenette class, [0, 1], with ImageNet-1k labels and class ranks 0..9."
    root = imagenette_path(required=False)
    if root is None: pytest.skip('Imagenette images not available')
    rows = [l.split('\t') for l in (root/'classes.tsv').read_text().splitlines()[1:]]
    files = [(f, int(i), k) for k, (w, i, *_) in enumerate(rows)
             for f in sorted((root/'train'/w).glob('*.JPEG'))[start:start + n]]
    x = torch.stack([pil_to_tensor(Image.open(f).convert('RGB').resize((224, 224))) for f, *_ in files]).float() / 255
    return x, torch.tensor([i for _, i, _ in files]), torch.tensor([k for *_, k in files])


@torch.no_grad()
def _top1(teacher, x, y):
    logits = torch.cat([teacher.model(teacher.prepare(b)) for b in x.split(50)])
    return (logits.argmax(1) == y).float().mean().item()


def test_efficientnet_lite0_is_pretrained():
    torch.manual_seed(0)
    x, y, _ = _images(0, 30)
    t = build_teacher('efficientnet_lite0')
    acc = _top1(t, x, y)
    acc_imnet = _top1(TimmTeacher(t.model, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)), x, y)
    print(f'top-1 over 1000 classes on 300 images: {acc:.1%} (mean=std=0.5), {acc_imnet:.1%} (ImageNet mean/std)')
    assert acc > 0.65 and acc > acc_imnet


@torch.no_grad()
def test_efficientnet_feature_choice():
    x, _, k = _images(100, 30)
    y = k.numpy()
    feats = {'blocks.6': build_teacher('efficientnet_lite0'), 'conv_head': build_teacher('efficientnet_lite0', layer=None)}
    rng = np.random.RandomState(0)
    idx = rng.permutation(len(y)); tr, te = idx[:200], idx[200:]
    sel = rng.randint(0, 196, size=(len(y), 16))                      # 16 random patches per image
    acc = {}
    for name, t in feats.items():
        f = torch.nn.functional.normalize(torch.cat([t(b) for b in x.split(50)]), dim=-1).numpy()   # [300, 196, D]
        X = np.take_along_axis(f, sel[..., None], 1)
        Xtr, ytr = X[tr].reshape(-1, f.shape[-1]), np.repeat(y[tr], 16)
        Xte, yte = X[te].reshape(-1, f.shape[-1]), np.repeat(y[te], 16)
        mu = np.stack([Xtr[ytr == c].mean(0) for c in range(10)])
        mu /= np.linalg.norm(mu, axis=1, keepdims=True)
        acc[name] = float(((Xte @ mu.T).argmax(1) == yte).mean())
    print('per-patch nearest-class-mean accuracy:', acc)
    assert acc['blocks.6'] > acc['conv_head'] and acc['blocks.6'] > 0.6
