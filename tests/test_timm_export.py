"""A pretrained BEiT v2 backbone exported by `beitv2_lab.mim.export_timm` loads strictly into timm and gives the
same features as our model, for a small variant and for the official base shape."""
import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models.beit import Beit

from beitv2_lab.mim import TIMM_ARCH, create_mim, create_timm, export_timm, timm_kwargs, timm_state_dict

ATOL = 1e-5


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    "Tiny CPU work: one thread avoids OpenMP spin-waits on a shared machine."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def perturbed(name, **kw):
    "A model whose bias table, layer scales, norms, biases and tokens are far from their init, so a wrong mapping shows."
    torch.manual_seed(0)
    m = create_mim(name, **kw).eval()
    with torch.no_grad():
        m.rel_pos_bias.relative_position_bias_table.normal_(0, 1.)
        for blk in m.blocks:
            for p in (blk.gamma_1, blk.gamma_2): p.normal_(0, .5)
            blk.attn.q_bias.normal_(0, .5); blk.attn.v_bias.normal_(0, .5)
            blk.norm1.weight.normal_(1, .3); blk.norm2.bias.normal_(0, .3)
        m.norm.weight.normal_(1, .5); m.norm.bias.normal_(0, .5)
        m.cls_token.normal_(0, 1.)
    return m


@pytest.fixture(scope='module', params=['beitv2_tiny_patch16_224', 'beitv2_base_patch16_224'])
def exported(request, tmp_path_factory):
    "(our model, path of its export with norm='norm', path with norm='fc_norm')."
    m = perturbed(request.param)
    d = tmp_path_factory.mktemp(request.param)
    return m, export_timm(m, d/'backbone.safetensors'), export_timm(m, d/'backbone_fc.safetensors', norm='fc_norm')


def images(m, B=2):
    torch.manual_seed(1)
    return torch.randn(B, 3, m.config['img_size'], m.config['img_size'])


def timm_model(path, **kw):
    "timm's own pretrained loader on a local file; num_classes matches the overlay's 0, so timm loads strictly."
    return timm.create_model(TIMM_ARCH, pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=0),
                             **{'num_classes': 0, **kw}).eval()


def test_exported_keys(exported):
    m, path, path_fc = exported
    sd = load_file(str(path))
    assert not [k for k in sd if k.startswith(('mask_token', 'lm_head', 'cls_pt_', 'rel_pos_bias.')) or 'index' in k]
    table = m.rel_pos_bias.relative_position_bias_table
    for i in range(len(m.blocks)): torch.testing.assert_close(sd[f'blocks.{i}.attn.relative_position_bias_table'], table)
    assert {'norm.weight', 'norm.bias'} <= set(sd) and not any(k.startswith('fc_norm') for k in sd)
    sd_fc = load_file(str(path_fc))
    assert {'fc_norm.weight', 'fc_norm.bias'} <= set(sd_fc) and not any(k.startswith('norm.') for k in sd_fc)
    # the key set is exactly timm's (strict), for a Beit built from timm_kwargs
    Beit(**timm_kwargs(m), num_classes=0).load_state_dict(sd, strict=True)


@pytest.mark.parametrize('global_pool', ['avg', 'token'])
def test_same_features_in_timm(exported, global_pool):
    m, path, _ = exported
    tm = timm_model(path, **timm_kwargs(m, global_pool=global_pool))
    x = images(m, 1 if m.config['embed_dim'] >= 768 else 2)
    with torch.no_grad():
        ours, theirs = m.forward_features(x), tm.forward_features(x)
        torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=ATOL)
        pooled = ours[:, 1:].mean(1) if global_pool == 'avg' else ours[:, 0]
        torch.testing.assert_close(tm.forward_head(theirs, pre_logits=True), pooled, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(tm(x), pooled, atol=ATOL, rtol=ATOL)   # num_classes=0: forward = pooled features


def test_fresh_head(exported):
    "num_classes > 0: timm adds a freshly initialised head; the backbone is ours (checked by create_timm)."
    m, path, _ = exported
    x = images(m, 1)
    for tm in (timm_model(path, num_classes=10, **timm_kwargs(m)), create_timm(path, num_classes=10)):
        tm.eval()
        assert tm.head.weight.shape == (10, m.config['embed_dim'])
        with torch.no_grad():
            feats = m.forward_features(x)
            torch.testing.assert_close(tm.forward_head(tm.forward_features(x), pre_logits=True), feats[:, 1:].mean(1),
                                       atol=ATOL, rtol=ATOL)
            assert tm(x).shape == (1, 10)


def test_fc_norm_export(exported):
    "norm='fc_norm': our norm becomes timm's fc_norm (stock beitv2 layout); features are the pre-norm tokens."
    m, _, path_fc = exported
    kw = {} if m.config['embed_dim'] == 768 else timm_kwargs(m, norm='fc_norm')   # base loads into stock timm
    tm = timm_model(path_fc, **kw)
    assert isinstance(tm.norm, torch.nn.Identity)
    x = images(m, 1)
    with torch.no_grad():
        pre_norm = m.forward_encoder(x)[0]
        torch.testing.assert_close(tm.forward_features(x), pre_norm, atol=ATOL, rtol=ATOL)
        torch.testing.assert_close(tm.forward_head(pre_norm, pre_logits=True), m.norm(pre_norm[:, 1:].mean(1)),
                                   atol=ATOL, rtol=ATOL)


def test_raw_checkpoint_does_not_load_into_timm():
    "Why the export exists: the pretraining layout (shared table, mask token, lm_head) is not timm's."
    m = create_mim('beitv2_tiny_patch16_224', img_size=64, head_dim=64)
    with pytest.raises(RuntimeError):
        Beit(**timm_kwargs(m), num_classes=0).load_state_dict(m.state_dict(), strict=True)
    Beit(**timm_kwargs(m), num_classes=0).load_state_dict(timm_state_dict(m), strict=True)


def test_bad_arguments(tmp_path):
    m = create_mim('beitv2_tiny_patch16_224', img_size=64, head_dim=64)
    with pytest.raises(ValueError, match='norm'): export_timm(m, tmp_path/'a.safetensors', norm='layer')
    with pytest.raises(ValueError, match='global_pool'): timm_kwargs(m, global_pool='max')
    (tmp_path/'other.safetensors').write_bytes(b'')
    with pytest.raises(ValueError, match='not a readable safetensors'): create_timm(tmp_path/'other.safetensors')
    from safetensors.torch import save_file
    save_file({'a': torch.zeros(1)}, str(tmp_path/'foreign.safetensors'))
    with pytest.raises(ValueError, match="expected 'beitv2_timm'"): create_timm(tmp_path/'foreign.safetensors')
    with pytest.raises(FileNotFoundError): create_timm(tmp_path/'missing.safetensors')
