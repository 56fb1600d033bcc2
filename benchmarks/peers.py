"""Ours against peer implementations at equal budget, trained one after the other on our harness, side by side.

Each method is trained by ours and by a peer library on the same harness, data, backbone size, steps, batch and
augmentations, one after the other; then both results are printed side by side.

    python benchmarks/peers.py all --seeds 0,1                     # every method at its task's defaults
    python benchmarks/peers.py vqkd --seeds 0,1                    # VQ-KD's default run: 220 steps, 128 px, K 1024
    python benchmarks/peers.py ibot --seeds 0,1 -p steps 1600 -p warmup_steps 160 -p teacher_temp_warmup_steps 160

Every run is `beitv2_lab.train.run(task, cfg)` on `--data` (split 'train'; class folders under it) with the task's
defaults and the `-p` overrides (given to ours and the peer alike), so the loop, data stream, crops, masks, AdamW,
lr / weight-decay schedules, clipping and precision are the same; a peer is a small `Task` subclass here that swaps
the part the peer implements. Scored on images the runs did not train on (the folder's 'holdout' part):
- iBOT: ours (`IBOTTask`) vs lightly's building blocks (`LightlyIBOTTask`: `MaskedVisionTransformerTIMM` on a timm
  ViT of our variant's size, one `DINOProjectionHead` for CLS and patches, `DINOLoss` + `IBOTPatchLoss`, wired as
  lightly's examples/pytorch/ibot.py wires them). k-NN top-1 of the EMA teacher's backbone CLS token
  (`learning_curves.Scorer`: bank `--bank` train-part images, queries the whole holdout part, ± the binomial s.e.
  sqrt(p(1-p)/n)) after training and of the same seed's ViT at init (step 0); the teacher's CLS entropy (nats,
  centred and sharpened as the loss sees it; mean of the last three log windows).
- VQ-KD: ours (`VQKDTask`, `NormEMAVectorQuantizer`) vs `vector_quantize_pytorch.VectorQuantize` (`VQPeerTask`):
  the same encoder, decoder and teacher, only the quantizer swapped (cosine sim, k-means init, EMA decay, dead-code
  threshold `threshold_ema_dead_code`, commitment weight: ours' values). Cosine to the teacher (`cos`, mean of the
  last three log windows) and held-out utilisation (share of the K codes that the run's own quantizer picks on about
  102,400 holdout patch vectors, as benchmarks/vqkd_restarts.py measures it).
- dVAE: ours (`DVAETask`, DALL-E's architecture) vs `dalle_pytorch.DiscreteVAE` (`DallePeerTask`) with the same K and
  token grid and its hidden width chosen for the same parameter count (benchmarks/dvae.py's sizing). Held-out PSNR of
  decode(encode(x)) on every holdout image at the run's `img_size`, beside the 8x8 patch-mean baseline, the paired gain
  over it (± s.e. over images) and the share of the K codes those images use (`learning_curves.Scorer.dvae`). Where
  dalle-pytorch does not import, its row says why (`pip install --no-deps dalle-pytorch`; see the README).
One `RESULT {json}` line per run, then a markdown table; run folders `<out>/<method>_<impl>_seed<s>`. Wall times are
the training runs' (online k-NN included, the same for both); compare them only within one invocation.

Where a peer differs from ours, and why (everything else is ours' value of the same hyperparameter):
- lightly iBOT: the ViT is timm's (a k bias in qkv; timm's init: trunc-normal 0.02 like ours' 'ibot' init but the CLS
  token at std 1e-6; `init='beit'` has no lightly counterpart and is refused); positions resampled for the local
  crops without antialiasing (as its example); one shared head only (`shared_head=False` / `patch_out_dim` refused);
  the teacher head starts as a copy of the student's (its example draws it separately; official iBOT and ours copy);
  its patch centre follows the masked teacher tokens, ours (official) all of them; masks are ours (same data), not
  its `random_block_mask`. Its losses take the temperatures, so the warmups are ours; the teacher momentum and weight
  decay follow our cosine schedules (its example has its own); the EMA is its `update_momentum`, the last-layer
  freeze its head's `cancel_last_layer_gradients` counted in steps. A batch without any masked patch (at real sizes and
  mask_prob 0.5: p = 2^-(n_global x batch)) would make its patch centre NaN; the centre is kept for such a batch.
- dalle_pytorch DiscreteVAE: its own architecture (stride-2 convs of one width, resblocks at the lowest resolution
  only, `num_resnet_blocks=2` as its train_vae.py), its own normalisation of the pixels and its own loss, MSE (ours:
  DALL-E's logit-Laplace; `recon` sets ours' only); the Gumbel temperature (`temp`), the straight-through switch (`hard`) and the KL weight
  follow ours' schedules. Its KL term is summed over the batch, positions and codes; ours is β times the mean KL per
  position over one token's 3x8x8 pixel-channels (DALL-E's units), so its weight is set each step to
  β / (192 · batch · positions): the same multiple of the KL per position as ours (a test checks it).
- vector_quantize_pytorch: its EMA (Laplace-smoothed counts, codes = l2norm(embed_avg / count)) and dead-code
  replacement (batch vectors, count reset to the threshold) are its own; it has no restart grace (`restart_grace` must
  be 0); it does not count restarts.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curves import IMAGENETTE, Scorer, parse_value  # noqa: E402

from beitv2_lab.distrib import all_reduce_sum, get_world_size, tensors_in_sync  # noqa: E402
from beitv2_lab.task_dvae import DVAETask, evaluate_run  # noqa: E402
from beitv2_lab.task_ibot import IBOTTask, ibot_dataset, view_major  # noqa: E402
from beitv2_lab.task_vqkd import VQKDTask  # noqa: E402
from beitv2_lab.train import Built, check, steps_per_epoch  # noqa: E402


# ---------------------------------------------------------------------------------------------------- VQ-KD peer
class UsageWindow:
    "The usage window of our quantizers' contract for a peer module with a `window_usage` [K] buffer: reset, and resume state."
    def reset_stats(self): self.window_usage.zero_()
    def extra_state_dict(self) -> dict: return dict(usage=self.window_usage.clone())
    def load_extra_state_dict(self, sd: dict): self.window_usage.copy_(sd['usage'])


class VQPeerQuantizer(UsageWindow, nn.Module):
    """`vector_quantize_pytorch.VectorQuantize` behind `NormEMAVectorQuantizer`'s contract: `z [..., C]` →
    `(z_q [..., C] fp32, loss [], tok_ids [...] long)`, straight-through gradient, `stats()` / `reset_stats()`."""
    def __init__(self,
                 codebook_size: int,         # K
                 code_dim: int,              # C
                 decay: float,               # EMA decay of codes and counts
                 dead_code_threshold: float, # a code whose EMA count falls below this is replaced (0: never)
                 beta: float = 1.0,          # commitment weight
                 kmeans_iters: int = 10,     # Lloyd iterations of the k-means init on the first training batch
                 sync: bool = False,         # all-reduce codebook statistics across DDP ranks
                ):
        super().__init__()
        from vector_quantize_pytorch import VectorQuantize
        self.codebook_size, self.code_dim, self.dead_code_threshold = codebook_size, code_dim, dead_code_threshold
        self.vq = VectorQuantize(dim=code_dim, codebook_size=codebook_size, decay=decay, kmeans_init=True,
                                 kmeans_iters=kmeans_iters, use_cosine_sim=True, threshold_ema_dead_code=dead_code_threshold,
                                 commitment_weight=beta, rotation_trick=False,   # plain straight-through, as VQ-KD
                                 sync_codebook=sync, sync_kmeans=True)
        self.register_buffer('window_usage', torch.zeros(codebook_size, dtype=torch.long), persistent=False)

    @classmethod
    def like(cls, q) -> VQPeerQuantizer:
        "A peer with the hyperparameters of our quantizer `q` (a `NormEMAVectorQuantizer`)."
        return cls(q.codebook_size, q.code_dim, q.decay, q.dead_code_threshold, q.beta, q.kmeans_iters, q.sync)

    @property
    def codebook(self) -> torch.Tensor: return self.vq.codebook   # [K, C] unit codes

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if z.shape[-1] != self.code_dim: raise ValueError(f'z: last dim must be code_dim={self.code_dim}, got shape {tuple(z.shape)}')
        with torch.autocast(device_type=z.device.type, enabled=False):   # quantized in fp32, as ours
            z_q, tok_ids, loss = self.vq(z.float())
        self.window_usage.index_add_(0, tok_ids.flatten(), torch.ones_like(tok_ids.flatten()))
        return z_q, loss, tok_ids

    def stats(self) -> dict:
        "Utilisation (%), perplexity and dead codes, as `NormEMAVectorQuantizer.stats` (no restart count)."
        from beitv2_lab.codebook import perplexity
        u, size = self.window_usage, self.vq._codebook.cluster_size[0]
        return dict(utilisation=100. * (u > 0).double().mean().item(), perplexity=perplexity(u),
                    dead_codes=int((size < self.dead_code_threshold).sum()))



class VQPeerTask(VQKDTask):
    "VQ-KD with `vector_quantize_pytorch` as the quantizer: ours' encoder, decoder, teacher and run, the quantizer swapped."
    name = 'vqkd_vqpytorch'
    def validate(self, cfg):
        super().validate(cfg)
        check(cfg.restart_grace == 0, 'restart_grace', f'vector_quantize_pytorch has no restart grace; use 0 for this peer, got {cfg.restart_grace}')

    def build(self, cfg, device) -> Built:
        built = super().build(cfg, device)               # ours, all of it: same init of everything but the quantizer
        built.model.quantize = VQPeerQuantizer.like(built.model.quantize).to(device)
        return built

    def window_metrics(self, built, step) -> dict:
        q = built.model.quantize
        row = dict(codebook_in_sync=tensors_in_sync([q.codebook], 'codebooks'), **q.stats())
        q.reset_stats()
        return row

    def finish(self, built, out_dir) -> dict: return {}  # the weights are in the checkpoint; no tokenizer file (not our quantizer)


class RunningMeanEMATask(VQKDTask):
    """An ablation, not a peer: ours with the peer's codebook EMA rule (`ema_rule='running_mean'`, a count-weighted
    running mean with Laplace-smoothed counts) and nothing else changed (ours' k-means init, dead-code restarts,
    encoder, decoder, teacher): does the EMA rule explain the gap?"""
    name = 'vqkd_running_mean_ema'
    def build(self, cfg, device) -> Built: return super().build(dataclasses.replace(cfg, ema_rule='running_mean'), device)


class QuantizerCodes:
    "A VQ-KD model's own quantizer as a tokenizer: `encode(images in [0, 1]) -> tok_ids [B, N]`, eval mode (no codebook update)."
    def __init__(self, model): self.model = model.eval()
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.quantize(self.model.forward_encoder(images))[2]


def heldout_utilisation(task, cfg, n_vectors: int = 102_400) -> float:
    """% of the K codes the run's last checkpoint uses on about `n_vectors` patch vectors of images it did not train on
    (benchmarks/vqkd_restarts.py's measure; codes picked by the run's own quantizer, ours or the peer's)."""
    from beitv2_lab.data import EmbeddedPhotos, EvalTransform
    from beitv2_lab.report import code_usage, encode_images
    from beitv2_lab.train import build_dataset, latest_checkpoint, load_checkpoint
    torch.manual_seed(cfg.seed)
    built = task.build(cfg, torch.device('cpu'))
    load_checkpoint(latest_checkpoint(cfg.out_dir), built.model)
    n_images = n_vectors // (cfg.img_size // 16) ** 2
    tf = EvalTransform(size=cfg.img_size, mean=None)
    if cfg.data_path == 'embedded': ds = EmbeddedPhotos(n_samples=n_images, size=cfg.img_size, transform=tf, seed=cfg.seed + 1000)
    else: ds = build_dataset(dataclasses.replace(cfg, split='holdout'), tf)
    ids, _ = encode_images(QuantizerCodes(built.model), ds, n_images=n_images, keep_images=False)
    return 100. * (code_usage(ids, cfg.codebook_size) > 0).float().mean().item()


# ----------------------------------------------------------------------------------------------------- iBOT peer
class LightlyIBOTNet(nn.Module):
    "lightly's masked timm ViT + one DINO head for CLS and patches, called as lightly's iBOT example calls them."
    def __init__(self, backbone: nn.Module, head: nn.Module):   # a `MaskedVisionTransformerTIMM`, a `DINOProjectionHead`
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list,             # [B, 3, H, W] per crop, `n_global` globals first
                masks: torch.Tensor,           # bool [n_global·B, N], view-major, True = masked
                n_global: int,
                mask_input: bool = True,       # mask the globals' patches (the student); the teacher sees them whole
               ) -> tuple[torch.Tensor, torch.Tensor]:
        "`(cls logits [V·B, K] of every crop given, logits [M, K] of the globals' masked patches)`."
        seq_mask = nn.functional.pad(masks, (1, 0))                                # [G·B, 1+N]: the CLS token never masked
        tokens = self.backbone.encode(torch.cat(crops[:n_global]), mask=seq_mask if mask_input else None)
        cls = [tokens[:, 0]] + ([self.backbone.encode(torch.cat(crops[n_global:]))[:, 0]] if len(crops) > n_global else [])
        return self.head(torch.cat(cls)), self.head(tokens[seq_mask])


class LightlyIBOT(nn.Module):
    "Student, EMA teacher (always in eval mode) and lightly's two losses: what the peer run trains and checkpoints."
    def __init__(self, student: LightlyIBOTNet, teacher: LightlyIBOTNet, dino: nn.Module, ibot: nn.Module):
        super().__init__()
        self.student, self.teacher, self.dino, self.ibot = student, teacher, dino, ibot
    def train(self, mode: bool = True):
        super().train(mode); self.teacher.eval(); return self


def lightly_ibot(cfg) -> LightlyIBOT:
    "The peer's model for an `IBOTConfig`: a timm ViT of `cfg.model`'s size in lightly's modules, heads and losses."
    from lightly.loss import DINOLoss, IBOTPatchLoss
    from lightly.models.modules import DINOProjectionHead, MaskedVisionTransformerTIMM
    from timm.models.vision_transformer import VisionTransformer
    from beitv2_lab.ibot import IBOT_VARIANTS, _IBOT_VIT
    arch = IBOT_VARIANTS[cfg.model]
    vit = VisionTransformer(img_size=cfg.global_size, patch_size=_IBOT_VIT['patch_size'], mlp_ratio=_IBOT_VIT['mlp_ratio'],
                            num_classes=0, dynamic_img_size=True, drop_path_rate=cfg.drop_path_rate, **arch)
    backbone = MaskedVisionTransformerTIMM(vit=vit, antialias=False, weight_initialization='skip', pos_embed_initialization='skip')
    head = lambda norm_last: DINOProjectionHead(arch['embed_dim'], cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                                                freeze_last_layer=cfg.freeze_last_layer, norm_last_layer=norm_last)
    student = LightlyIBOTNet(backbone, head(cfg.norm_last_layer))
    teacher = LightlyIBOTNet(copy.deepcopy(backbone), head(True))          # a weight-normed head does not deepcopy
    teacher.head.load_state_dict(student.head.state_dict())
    dino = DINOLoss(cfg.out_dim, warmup_teacher_temp=cfg.warmup_teacher_temp, teacher_temp=cfg.teacher_temp,
                    student_temp=cfg.student_temp, center_momentum=cfg.center_momentum)
    ibot = IBOTPatchLoss(cfg.out_dim, teacher_temp=cfg.patch_temp, student_temp=cfg.student_temp, center_momentum=cfg.center_momentum)
    return LightlyIBOT(student, teacher.requires_grad_(False), dino, ibot)


class LightlyIBOTTask(IBOTTask):
    "iBOT with lightly's ViT wrapper, head and losses on our harness, data, masks and schedules (see the module docstring)."
    name, progress_keys = 'ibot_lightly', ('loss', 'teacher_entropy_cls')
    def validate(self, cfg):
        super().validate(cfg)
        check(cfg.init == 'ibot', 'init', f"the lightly peer has timm's trunc-normal init (~ 'ibot') only; use init='ibot', got {cfg.init!r}")
        check(cfg.shared_head and cfg.patch_out_dim in (0, cfg.out_dim), 'shared_head',
              f'the lightly peer has one head for CLS and patches; use shared_head=True, patch_out_dim=0, got {cfg.shared_head}, {cfg.patch_out_dim}')

    def build(self, cfg, device) -> Built:
        self.data = ibot_dataset(cfg)
        self.epoch = steps_per_epoch(self.data, cfg.batch_size, get_world_size()) if cfg.teacher_temp_schedule == 'epoch' else 0
        self.window = torch.zeros(2, dtype=torch.float64, device=device)        # teacher CLS entropy sum, steps
        model = lightly_ibot(cfg).to(device)
        return Built(model=model, train_module=model.student, ddp=dict(broadcast_buffers=False), no_weight_decay=set())

    def temps(self, cfg, step: int) -> tuple[float, float]:
        "Teacher temperatures `(cls, patch)` at `step`, as `beitv2_lab.ibot.IBOTLoss.temps` (per step, or per epoch)."
        from beitv2_lab.ibot import linear_warmup
        n = self.epoch
        t, w = (step // n, cfg.teacher_temp_warmup_steps // n) if n else (step, cfg.teacher_temp_warmup_steps)
        return linear_warmup(t, cfg.warmup_teacher_temp, cfg.teacher_temp, w), linear_warmup(t, cfg.warmup_patch_temp, cfg.patch_temp, w)

    def step(self, built, batch, step) -> dict:
        cfg, m, G = built.cfg, built.model, built.cfg.n_global
        crops, masks = batch['crops'], view_major(batch['bool_masked_pos'])          # masks [G·B, N]
        t_cls, t_patch = self.temps(cfg, step)
        with torch.no_grad(): tc, tm = m.teacher(crops[:G], masks, G, mask_input=False)   # [G·B, K], [M, K]
        sc, sm = built.net(crops, masks, G)                                            # [V·B, K], [M, K]
        with torch.no_grad():                                                          # before DINOLoss moves the centre
            q = torch.softmax((tc.float() - m.dino.center[0]) / t_cls, -1)
            entropy = torch.special.entr(q).sum(-1).mean()
        cls_loss = m.dino(teacher_out=list(tc.chunk(G)), student_out=list(sc.chunk(len(crops))), teacher_temp=t_cls)
        g, centre, any_masked = cfg.global_size // 16, m.ibot.center.center, masks.any()
        patch_loss = m.ibot(teacher_out=tm, student_out=sm, mask=masks.view(len(masks), g, g), teacher_temp=t_patch)
        m.ibot.center.center = torch.where(any_masked, m.ibot.center.center, centre)   # no masked rows: keep (not NaN)
        self.window += all_reduce_sum(torch.stack([entropy.double(), torch.ones_like(entropy, dtype=torch.float64)]))
        loss = cfg.lambda1 * cls_loss + cfg.lambda2 * patch_loss
        return dict(loss=loss, cls_loss=cls_loss.detach(), patch_loss=patch_loss.detach(), teacher_entropy_cls=entropy,
                    teacher_temp=t_cls, patch_teacher_temp=t_patch)

    def after_backward(self, built, step):
        from beitv2_lab.core import cosine_schedule
        cfg, student = built.cfg, built.model.student
        student.head.cancel_last_layer_gradients(step)                                # lightly's freeze, counted in steps
        anchor = student.backbone.vit.patch_embed.proj.weight                         # always decayed: marks the decayed group
        wd = cosine_schedule(step, cfg.weight_decay, cfg.weight_decay_end, cfg.steps)
        for grp in built.optimizer.param_groups:
            if any(p is anchor for p in grp['params']): grp['weight_decay'] = wd

    def after_step(self, built, step):
        from lightly.models.utils import update_momentum
        from beitv2_lab.core import cosine_schedule
        update_momentum(built.model.student, built.model.teacher, cosine_schedule(step, built.cfg.momentum_teacher, 1., built.cfg.steps))

    def window_metrics(self, built, step) -> dict:
        from beitv2_lab.core import cosine_schedule
        cfg, m = built.cfg, built.model
        total, n = self.window.tolist()
        row = dict(teacher_entropy_cls=total / max(n, 1.),
                   teacher_in_sync=tensors_in_sync([*m.teacher.state_dict().values(), m.dino.center, m.ibot.center.center], 'lightly teacher or centres'),
                   momentum=cosine_schedule(step - 1, cfg.momentum_teacher, 1., cfg.steps),
                   weight_decay=cosine_schedule(step - 1, cfg.weight_decay, cfg.weight_decay_end, cfg.steps))
        self.window.zero_()
        return row

    def features(self, built, images) -> torch.Tensor:
        "The teacher backbone's CLS token `[B, D]` of ImageNet-normalised images, as `IBOTTask.features`."
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        from torchvision.transforms.functional import normalize
        return built.model.teacher.backbone.encode(normalize(images, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD))[:, 0]

    def finish(self, built, out_dir) -> dict: return {}    # the weights are in the checkpoint
    def extra_state(self, built) -> dict: return dict(window=self.window.clone())
    def load_extra_state(self, built, tensors): self.window.copy_(tensors['window'])


# ----------------------------------------------------------------------------------------------------- dVAE peer
class DallePeerVAE(UsageWindow, nn.Module):
    """`dalle_pytorch.DiscreteVAE` behind our `DiscreteVAE`'s contract: the training forward
    `(images in [0, 1], hard, temperature, kl_weight) -> dict(loss, rec_loss, kl, tok_ids)`, `encode` / `decode` in
    [0, 1] pixels, `codebook_size` and the usage window (`stats`, `reset_stats`, `window_usage`)."""
    def __init__(self, ours, img_size: int):
        "A peer of the size of `ours` (a `beitv2_lab.dvae.DiscreteVAE`) at `img_size`, as benchmarks/dvae.py sizes it."
        super().__init__()
        from dvae import dalle_pytorch_vae, theirs_kwargs
        self.vae = dalle_pytorch_vae()(**theirs_kwargs(ours, img_size))
        self.codebook_size = ours.codebook_size
        self.register_buffer('window_usage', torch.zeros(self.codebook_size, dtype=torch.long), persistent=False)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        "Encoder logits `[B, K, h, w]` of images in [0, 1] (its own normalisation inside)."
        return self.vae(images, return_logits=True)

    def forward(self, images: torch.Tensor, hard: bool = False, temperature: float = 1.0, kl_weight: float = 0.0) -> dict:
        "One training forward through its own `forward(return_loss=True)`: its MSE and its KL term, ours' β in DALL-E's units."
        from beitv2_lab.dvae import kl_to_uniform
        if kl_weight < 0: raise ValueError(f'kl_weight must be >= 0, got {kl_weight!r}')
        vae, (B, _, H, W) = self.vae, images.shape
        vae.straight_through = hard
        # Its KL is summed over the batch, positions and codes; ours (DALL-E's units) is β · (mean KL per position)
        # / (3·8·8), one token's pixel-channels. Its weight is set so that the two terms are the same multiple of it.
        vae.kl_div_loss_weight = kl_weight / (3 * 8 * 8 * B * (H // 8) * (W // 8))
        seen = {}
        hook = vae.encoder.register_forward_hook(lambda mod, inp, out: seen.update(logits=out))
        try: loss, out = vae(images, return_loss=True, return_recons=True, temp=temperature)
        finally: hook.remove()
        tok_ids = seen['logits'].detach().argmax(1).flatten(1)                           # [B, N]
        self.window_usage += torch.zeros_like(self.window_usage).index_add_(0, tok_ids.flatten(), torch.ones_like(tok_ids.flatten()))
        with torch.no_grad():
            rec_loss, kl = vae.loss_fn(vae.norm(images), out), kl_to_uniform(seen['logits'])
        return dict(loss=loss, rec_loss=rec_loss, kl=kl, tok_ids=tok_ids)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        "Token ids `[B, N]` of images in [0, 1]: argmax of its encoder logits (its `get_codebook_indices`)."
        return self.vae.get_codebook_indices(images)

    @torch.no_grad()
    def decode(self, tok_ids: torch.Tensor, grid: tuple | None = None) -> torch.Tensor:
        "Images `[B, 3, 8h, 8w]` in [0, 1] from token ids (its decoder works on a square grid in its normalised pixels)."
        h = math.isqrt(tok_ids.shape[1])
        if grid is not None and tuple(grid) != (h, h) or h * h != tok_ids.shape[1]:
            raise ValueError(f'tok_ids: dalle_pytorch decodes square grids only, got {tok_ids.shape[1]} tokens, grid {grid}')
        mean, std = (torch.tensor(t[:3], device=tok_ids.device).view(1, 3, 1, 1) for t in self.vae.normalization)
        return (self.vae.decode(tok_ids) * std + mean).clamp(0, 1)

    def stats(self) -> dict:
        from beitv2_lab.codebook import perplexity
        u = self.window_usage
        return dict(utilisation=100. * (u > 0).double().mean().item(), perplexity=perplexity(u), dead_codes=int((u == 0).sum()))



class DallePeerTask(DVAETask):
    "BEiT v1's dVAE with `dalle_pytorch.DiscreteVAE` on our harness, data, schedules and evaluation (see the module docstring)."
    name = 'dvae_dalle_pytorch'
    def validate(self, cfg):
        super().validate(cfg)
        check(cfg.img_size & (cfg.img_size - 1) == 0, 'img_size', f'dalle_pytorch needs a power of 2, got {cfg.img_size}')

    def build(self, cfg, device) -> Built:
        from beitv2_lab.dvae import create_dvae
        kw = dict(codebook_size=cfg.codebook_size) if cfg.codebook_size else {}
        ours = create_dvae(cfg.model, img_size=cfg.img_size, recon=cfg.recon, **kw)     # sizes the peer, then dropped
        return Built(model=DallePeerVAE(ours, cfg.img_size).to(device), ddp=dict(broadcast_buffers=False))

    def features(self, built, images) -> torch.Tensor:
        "The online k-NN's features: its encoder's logits averaged over positions `[B, K]`, as `DVAETask.features`."
        return built.model.logits(images).float().mean((2, 3))

    def finish(self, built, out_dir) -> dict:   # the weights are in the checkpoint; no tokenizer file (not our dVAE)
        return evaluate_run(built.model, built.cfg) if built.cfg.eval_images else {}


# -------------------------------------------------------------------------------------------------------- runner
def dvae_peer_missing() -> str:
    "Why `dalle_pytorch` cannot be run here ('' when it imports), as benchmarks/dvae.py finds it."
    from dvae import PEER_MISSING
    return PEER_MISSING


METHODS = {   # method -> (ours, the peer): (implementation name, Task class)
    'ibot': (('beitv2_lab', IBOTTask), ('lightly', LightlyIBOTTask)),
    'vqkd': (('beitv2_lab', VQKDTask), ('vector_quantize_pytorch', VQPeerTask)),
    'dvae': (('beitv2_lab', DVAETask), ('dalle_pytorch', DallePeerTask)),
}
ABLATIONS = {  # method -> ours with one part of the peer's (run only when named in --impls)
    'vqkd': (('beitv2_lab_running_mean_ema', RunningMeanEMATask),),
}


def mean_last(rows: list, key: str, n: int = 3) -> float:
    "Mean of `key` over the last `n` log rows that have it (one window is noisy)."
    vals = [r[key] for r in rows if key in r][-n:]
    if not vals: raise KeyError(f'{key}: not in the run log')
    return sum(vals) / len(vals)


def ibot_scores(task, cfg, bank: int) -> dict:
    "k-NN of the teacher CLS (± s.e.) at the run's end and of the same seed's ViT at init, with `learning_curves.Scorer`."
    from beitv2_lab.train import latest_checkpoint, load_checkpoint
    scorer = Scorer('ibot', cfg, bank, task=task)   # a peer task has the same `build` / `features` contract
    built = scorer.build()
    init = scorer.score(built)
    load_checkpoint(latest_checkpoint(cfg.out_dir), built.model)
    end = scorer.score(built)
    return dict(knn_top1=end['knn_top1'], knn_se=end['knn_se'], knn_top1_init=init['knn_top1'], knn_se_init=init['knn_se'],
                knn_queries=end['knn_queries'], knn_bank=end['knn_bank'])


def dvae_scores(task, cfg, bank: int) -> dict:
    "Held-out PSNR, the 8x8 patch-mean baseline, the paired gain (± s.e.) and code usage at the run's end (`Scorer`)."
    from beitv2_lab.train import latest_checkpoint, load_checkpoint
    scorer = Scorer('dvae', cfg, bank, task=task)
    built = scorer.build()
    load_checkpoint(latest_checkpoint(cfg.out_dir), built.model)
    end = scorer.dvae(built)
    return {k: end[k] for k in ('psnr', 'patch_mean_psnr', 'psnr_gain', 'psnr_gain_se', 'utilisation', 'psnr_images')}


def one_run(method: str, impl: str, task, cfg, bank: int) -> dict:
    "Train `task` with `cfg` from scratch on the harness, then score it; the RESULT fields."
    from beitv2_lab.train import read_metrics, run
    shutil.rmtree(cfg.out_dir, ignore_errors=True)
    t = time.perf_counter(); run(task, cfg); wall = time.perf_counter() - t
    rows = read_metrics(cfg.out_dir)
    if method == 'ibot': scores = dict(**ibot_scores(task, cfg, bank), teacher_entropy_cls=mean_last(rows, 'teacher_entropy_cls'))
    elif method == 'dvae': scores = dvae_scores(task, cfg, bank)
    else: scores = dict(cos=mean_last(rows, 'cos'), heldout_utilisation=heldout_utilisation(task, cfg))
    return dict(method=method, impl=impl, seed=cfg.seed, **scores, wall_s=wall, out_dir=cfg.out_dir)


def metrics_text(r: dict) -> str:
    if 'na' in r: return r['na']
    if r['method'] == 'ibot':
        return (f"k-NN top-1 {r['knn_top1']:.1f} ± {r['knn_se']:.1f} % (init {r['knn_top1_init']:.1f} ± {r['knn_se_init']:.1f}; "
                f"{r['knn_queries']} queries, bank {r['knn_bank']}), teacher CLS entropy {r['teacher_entropy_cls']:.2f} nats")
    if r['method'] == 'dvae':
        return (f"held-out PSNR {r['psnr']:.2f} dB, {r['psnr_gain']:+.2f} ± {r['psnr_gain_se']:.2f} dB over the 8x8 patch mean "
                f"({r['patch_mean_psnr']:.2f} dB; {r['psnr_images']} images), held-out code usage {r['utilisation']:.1f} %")
    return f"cos to teacher {r['cos']:.3f}, held-out utilisation {r['heldout_utilisation']:.1f} %"


def table(rows: list) -> str:
    lines = ['| method | impl | seed | metrics | wall s |', '|---|---|---|---|---|']
    for r in rows:
        wall = f"{r['wall_s']:.0f}" if 'wall_s' in r else ''
        lines.append(f"| {r['method']} | {r['impl']} | {'' if r.get('seed') is None else r['seed']} | {metrics_text(r)} | {wall} |")
    return '\n'.join(lines)


def configs(method: str, pairs: list, data: str, seed: int, out: Path, impls: list | None = None) -> list:
    "`(impl, task, cfg)` of ours and the peer (or of `impls`) for one seed, every config validated (a bad override fails before any training)."
    from beitv2_lab.train import resolve_schedules
    field_names = {f.name for f in dataclasses.fields(METHODS[method][0][1].Config)}
    fixed = {k: parse_value(METHODS[method][0][1].Config, k, v) for k, v in pairs if k in field_names}
    res = []
    chosen = impls or [i for i, _ in METHODS[method]]
    for impl, task_cls in METHODS[method] + ABLATIONS.get(method, ()):
        if impl not in chosen: continue
        task = task_cls()
        cfg = task.Config(**{'data_path': data, 'split': 'train', **fixed, 'seed': seed, 'progress': False,
                             'out_dir': str(out/f'{method}_{impl}_seed{seed}')})
        task.validate(cfg)
        cfg = resolve_schedules(cfg)                    # fractions of the run -> steps, as `run` does
        res.append((impl, task, cfg))
    return res


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('method', choices=('ibot', 'vqkd', 'dvae', 'all'))
    p.add_argument('--seeds', default='0,1', help='comma-separated seeds, one run of ours and one of the peer each')
    p.add_argument('-p', nargs=2, action='append', default=[], metavar=('FIELD', 'VALUE'),
                   help='a config override for ours and the peer (with all: for each method whose config has FIELD)')
    p.add_argument('--data', default=str(IMAGENETTE), help='image folder with class subfolders (its train part trains)')
    p.add_argument('--bank', type=int, default=2000, help='iBOT k-NN bank: at most this many train-part images (0: all)')
    p.add_argument('--out', default='runs/peers', help='run folders go here')
    p.add_argument('--impls', default='', help='comma-separated implementations to train (default: ours and the peer); '
                   'ablations: ' + ', '.join(i for v in ABLATIONS.values() for i, _ in v))
    a = p.parse_args(argv)
    try: a.seeds = [int(s) for s in a.seeds.split(',')]
    except ValueError: p.error(f'--seeds: comma-separated integers, e.g. 0,1; got {a.seeds!r}')
    if a.bank < 0: p.error(f'--bank: must be >= 0 (0: the whole train part), got {a.bank}')
    a.methods = ['ibot', 'vqkd', 'dvae'] if a.method == 'all' else [a.method]
    a.impls = [i for i in a.impls.split(',') if i] or None
    known = {i for m in a.methods for i, _ in METHODS[m] + ABLATIONS.get(m, ())}
    if a.impls and set(a.impls) - known: p.error(f'--impls: unknown {sorted(set(a.impls) - known)}; choose from {sorted(known)}')
    trained = [m for m in a.methods if m in METHODS]
    for k, _ in a.p:
        if trained and not any(k in {f.name for f in dataclasses.fields(METHODS[m][0][1].Config)} for m in trained):
            p.error(f"-p {k}: not a field of {' or '.join(METHODS[m][0][1].Config.__name__ for m in trained)}")
    return a


def main(argv=None):
    a = parse_args(argv)
    missing = dvae_peer_missing() if 'dvae' in a.methods else ''
    trained = [m for m in a.methods if not (m == 'dvae' and missing)]
    plan = [(m, s, configs(m, a.p, a.data, s, Path(a.out), a.impls)) for m in trained for s in a.seeds]
    rows = []
    for method, seed, runs in plan:
        for impl, task, cfg in runs:
            res = one_run(method, impl, task, cfg, a.bank)
            print('RESULT', json.dumps(res), flush=True); rows.append(res)
    if missing:
        res = dict(method='dvae', impl='dalle_pytorch', seed=None, na=f'n/a (not installed: {missing.splitlines()[0]})')
        print('RESULT', json.dumps(res), flush=True); rows.append(res)
    print('\n' + table(rows))


if __name__ == '__main__':
    main()
