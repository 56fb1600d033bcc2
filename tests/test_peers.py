"""benchmarks/peers.py: the VQ-KD peer quantizer keeps our quantizer's contract, and each peer task trains on the harness."""

import dataclasses
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO/'benchmarks'))
import peers  # noqa: E402

from beitv2_lab.codebook import NormEMAVectorQuantizer, nearest_code  # noqa: E402
from beitv2_lab.core import l2norm  # noqa: E402
from beitv2_lab.test_utils import TINY_RUNS  # noqa: E402
from beitv2_lab.train import read_metrics, run  # noqa: E402

RUN = dict(n_embedded=64, num_workers=0, progress=False, steps=3, log_every=1, ckpt_every=3)


def tiny_cfg(kind: str, task, tmp_path, **kw):
    return task.Config(**{**TINY_RUNS[kind][1], **RUN, 'out_dir': str(tmp_path/kind), **kw})


def quantize(q, enc, x, upstream):
    "One training call of `q` on `enc(x)`; the outputs and d(z_q · upstream)/dz."
    z = enc(x); z.retain_grad()
    z_q, loss, tok_ids = q(z)
    (z_q * upstream).sum().backward()
    return z_q, loss, tok_ids, z.grad


def test_vq_peer_keeps_our_quantizer_contract():
    torch.manual_seed(0)
    ours = NormEMAVectorQuantizer(64, 8, decay=0.99, dead_code_threshold=0.1)
    peer = peers.VQPeerQuantizer.like(ours)
    assert peer.vq.commitment_weight == ours.beta and peer.dead_code_threshold == ours.dead_code_threshold
    enc, x, up = torch.nn.Linear(16, 8), torch.randn(4, 10, 16), torch.randn(4, 10, 8)
    (zq_o, loss_o, ids_o, g_o), (zq_p, loss_p, ids_p, g_p) = (quantize(q, enc, x, up) for q in (ours, peer))
    assert zq_p.shape == zq_o.shape == (4, 10, 8) and zq_p.dtype == zq_o.dtype == torch.float32
    assert loss_p.shape == loss_o.shape == () and math.isfinite(loss_p.item()) and loss_p.item() >= 0 and loss_p.requires_grad
    assert ids_p.shape == ids_o.shape == (4, 10) and ids_p.dtype == ids_o.dtype == torch.long
    assert 0 <= int(ids_p.min()) and int(ids_p.max()) < 64
    # straight-through: both pass the upstream gradient through l2norm(z) untouched by the codes
    assert g_p.abs().sum() > 0
    torch.testing.assert_close(g_p, g_o)
    enc.zero_grad(); peer(enc(x))[1].backward()
    assert enc.weight.grad.abs().sum() > 0, 'the commitment loss reaches the encoder'
    # eval mode: the codes are the cosine-nearest codes of its codebook, and z_q is that code
    peer.eval()
    with torch.no_grad():
        z = enc(x); z_q, _, ids = peer(z)
    torch.testing.assert_close(ids.flatten(), nearest_code(l2norm(z).flatten(0, 1), peer.codebook))
    torch.testing.assert_close(z_q, peer.codebook[ids])
    assert set(peer.stats()) == {'utilisation', 'perplexity', 'dead_codes'} and peer.stats()['utilisation'] > 0
    with pytest.raises(ValueError, match='z: last dim must be code_dim=8'): peer(torch.randn(2, 3, 5))


def test_vq_peer_task_swaps_only_the_quantizer_and_trains(tmp_path):
    from beitv2_lab.task_vqkd import VQKDTask
    cfg = tiny_cfg('vqkd', VQKDTask, tmp_path, dead_code_threshold=0.5)
    built = {}
    for name, task in (('ours', VQKDTask()), ('peer', peers.VQPeerTask())):
        torch.manual_seed(cfg.seed); built[name] = task.build(cfg, torch.device('cpu')).model.state_dict()
    rest = lambda sd: {k: v for k, v in sd.items() if not k.startswith('quantize.')}
    assert rest(built['ours']).keys() == rest(built['peer']).keys()
    assert all(torch.equal(v, rest(built['peer'])[k]) for k, v in rest(built['ours']).items()), 'same encoder/decoder init'
    run(peers.VQPeerTask(), cfg)
    rows = read_metrics(cfg.out_dir)
    assert [r['step'] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r[k]) for r in rows for k in ('loss', 'cos', 'utilisation')) and all(r['codebook_in_sync'] for r in rows)
    assert 0 < peers.heldout_utilisation(peers.VQPeerTask(), cfg, n_vectors=256) <= 100


def test_lightly_ibot_task_trains_and_scores(tmp_path):
    cfg = tiny_cfg('ibot', peers.LightlyIBOTTask, tmp_path)
    m = peers.lightly_ibot(cfg)
    t, s = m.teacher.state_dict(), m.student.state_dict()
    assert t.keys() == s.keys() and all(torch.equal(v, s[k]) for k, v in t.items()), 'the teacher starts as the student'
    assert not any(p.requires_grad for p in m.teacher.parameters())
    task = peers.LightlyIBOTTask()
    run(task, cfg)
    rows = read_metrics(cfg.out_dir)
    assert [r['step'] for r in rows] == [1, 2, 3] and all(r['teacher_in_sync'] for r in rows)
    assert all(math.isfinite(r[k]) for r in rows for k in ('loss', 'cls_loss', 'patch_loss'))
    assert all(0 <= r['teacher_entropy_cls'] <= math.log(cfg.out_dim) + 1e-4 for r in rows)
    res = peers.ibot_scores(task, cfg, bank=60)
    assert res['knn_bank'] <= 60 and res['knn_queries'] > 0
    for k in ('knn_top1', 'knn_top1_init'): assert 0 <= res[k] <= 100
    for k in ('knn_se', 'knn_se_init'): assert math.isfinite(res[k])


def test_running_mean_ema_ablation_changes_only_the_ema_rule_and_trains(tmp_path):
    from beitv2_lab.task_vqkd import VQKDTask
    cfg = tiny_cfg('vqkd', VQKDTask, tmp_path)
    torch.manual_seed(cfg.seed); ours = VQKDTask().build(cfg, torch.device('cpu')).model
    torch.manual_seed(cfg.seed); abl = peers.RunningMeanEMATask().build(cfg, torch.device('cpu')).model
    assert (ours.quantize.ema_rule, abl.quantize.ema_rule) == ('vqkd', 'running_mean')
    sd = abl.state_dict()
    assert ours.state_dict().keys() == sd.keys() and all(torch.equal(v, sd[k]) for k, v in ours.state_dict().items()), 'same init'
    run(peers.RunningMeanEMATask(), cfg)
    assert [r['step'] for r in read_metrics(cfg.out_dir)] == [1, 2, 3]
    with pytest.raises(SystemExit): peers.parse_args(['vqkd', '--impls', 'beitv2_lab,nope'])


def test_bad_parameters_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match='restart_grace'):
        peers.VQPeerTask().validate(dataclasses.replace(tiny_cfg('vqkd', peers.VQPeerTask, tmp_path), restart_grace=25))
    with pytest.raises(ValueError, match='init'):
        peers.LightlyIBOTTask().validate(tiny_cfg('ibot', peers.LightlyIBOTTask, tmp_path, init='beit'))
    with pytest.raises(SystemExit): peers.parse_args(['ibot', '-p', 'codebook_size', '64'])   # a VQ-KD field only
    with pytest.raises(ValueError, match='restart_grace'):
        peers.main(['vqkd', '--seeds', '0', '-p', 'restart_grace', '25', '--out', str(tmp_path/'runs')])
    assert not (tmp_path/'runs').exists(), 'nothing trained'


def test_dalle_peer_keeps_our_dvae_contract_and_trains(tmp_path):
    from beitv2_lab.dvae import kl_to_uniform
    from beitv2_lab.task_dvae import DVAETask
    cfg = tiny_cfg('dvae', peers.DallePeerTask, tmp_path, img_size=32, eval_images=8)
    torch.manual_seed(0)
    ours, peer = DVAETask().build(cfg, torch.device('cpu')).model, peers.DallePeerTask().build(cfg, torch.device('cpu')).model
    assert peer.codebook_size == ours.codebook_size and peer.vae.num_tokens == ours.codebook_size
    n_ours, n_peer = (sum(p.numel() for p in m.parameters()) for m in (ours, peer))
    assert abs(n_peer - n_ours) < 0.05 * n_ours, 'the same size'
    x = torch.rand(3, 3, 32, 32)
    res = peer(x, temperature=1.0, kl_weight=6.6)
    assert res['tok_ids'].shape == (3, 16) and 0 <= int(res['tok_ids'].min()) and int(res['tok_ids'].max()) < peer.codebook_size
    torch.testing.assert_close(res['tok_ids'], peer.encode(x), msg='training ids are the argmax of its logits')
    kl = kl_to_uniform(peer.logits(x))
    # its own KL term, weighted so that it is ours' beta * KL per position / 192 (DALL-E's units)
    torch.testing.assert_close(res['loss'] - res['rec_loss'], 6.6 * kl / 192, rtol=1e-4, atol=1e-7)
    rec = peer.decode(peer.encode(x))
    assert rec.shape == x.shape and 0 <= rec.min() and rec.max() <= 1
    assert peer.stats()['utilisation'] > 0 and int(peer.window_usage.sum()) == 3 * 16
    with pytest.raises(ValueError, match='square grids'): peer.decode(peer.encode(x), grid=(2, 8))
    run(peers.DallePeerTask(), cfg)
    rows = read_metrics(cfg.out_dir)
    assert [r['step'] for r in rows] == [1, 2, 3] and all(r['usage_in_sync'] for r in rows)
    assert all(math.isfinite(r[k]) for r in rows for k in ('loss', 'rec_loss', 'kl', 'utilisation'))
    res = peers.dvae_scores(peers.DallePeerTask(), cfg, bank=40)
    assert res['psnr_images'] > 0 and 0 < res['utilisation'] <= 100
    torch.testing.assert_close(res['psnr'] - res['patch_mean_psnr'], res['psnr_gain'], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match='img_size'):
        peers.DallePeerTask().validate(dataclasses.replace(cfg, img_size=48))


def test_dvae_row_says_why_it_is_na(capsys, monkeypatch):
    monkeypatch.setattr(peers, 'dvae_peer_missing', lambda: "No module named 'dalle_pytorch': pip install --no-deps dalle-pytorch")
    peers.main(['dvae', '--seeds', '0'])
    out = capsys.readouterr().out
    assert '| dvae | dalle_pytorch |' in out and 'n/a (not installed: ' in out and 'RESULT {"method": "dvae"' in out


def test_lightly_ibot_batch_without_masked_patches_keeps_the_patch_centre(tmp_path):
    "lightly's patch centre is a mean over the masked rows: a batch without any leaves it as it was, not NaN."
    from beitv2_lab.data import collate
    cfg = tiny_cfg('ibot', peers.LightlyIBOTTask, tmp_path)
    task = peers.LightlyIBOTTask()
    built = task.build(cfg, torch.device('cpu')); built.cfg, built.net = cfg, built.model.student
    batch = collate([task.data[i] for i in range(4)])
    for masked in (False, True):
        batch['bool_masked_pos'][:] = masked
        before = built.model.ibot.center.center.clone()
        res = task.step(built, batch, 0)
        after = built.model.ibot.center.center
        assert math.isfinite(res['loss'].item()) and torch.isfinite(after).all()
        assert torch.equal(after, before) != masked
