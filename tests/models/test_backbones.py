"""PointNet++ SSG, Point-BERT and OpenShape's PointPatchTransformer: exact parameter counts and state-dict shapes of
the originals, the shared layers against naive references, forward contracts on the small presets, the registry.

Reference numbers are the originals' (ULIP ``models/pointnet2``, ``models/pointbert``; OpenShape ``src/models/ppat.py``
and the ``openshape`` demo package's release builders), counted from their constructors' shapes. Full-size models
are only built (parameter counts, shapes); forward passes run on the small presets or on tiny inputs.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from fixtures.released import randomise

from captionless3d.errors import ConfigError, DataError
from captionless3d.models import (
    PointBERT,
    PointNet2SSG,
    PointPatchTransformer,
    backbone_class,
    build_backbone,
    build_point_encoder,
    encoder_config,
    list_encoders,
)
from captionless3d.models.ops import ball_query, furthest_point_sample, gather_points, knn
from captionless3d.models.pointnet2 import PointNetSetAbstraction
from captionless3d.models.transformer import pre_norm_layer

#: bare backbones, without ULIP's pc_projection (the issue's and the originals' counts)
PARAMS = {
    "pointnet2_ssg": 1_465_408,
    "pointbert": 21_858_816,
    "openshape_pointbert_b32": 25_297_728,
    "openshape_pointbert_g14": 32_326_080,  # incl. its 512 -> 1280 proj
}
OUT = {"pointnet2_ssg": 256, "pointbert": 768, "openshape_pointbert_b32": 512, "openshape_pointbert_g14": 1280}

#: (key, shape) in the originals' state dicts
SHAPES = {
    "pointnet2_ssg": {
        "sa1.mlp_convs.0.weight": (64, 3, 1, 1), "sa1.mlp_convs.0.bias": (64,), "sa1.mlp_bns.2.running_var": (128,),
        "sa2.mlp_convs.0.weight": (128, 131, 1, 1), "sa2.mlp_convs.2.weight": (256, 128, 1, 1),
        "sa3.mlp_convs.0.weight": (256, 259, 1, 1), "sa3.mlp_convs.2.weight": (1024, 512, 1, 1),
        "fc1.weight": (512, 1024), "bn1.weight": (512,), "fc2.weight": (256, 512), "bn2.num_batches_tracked": (),
    },
    "pointbert": {
        "encoder.first_conv.0.weight": (128, 3, 1), "encoder.first_conv.1.running_mean": (128,),
        "encoder.first_conv.3.weight": (256, 128, 1), "encoder.second_conv.0.weight": (512, 512, 1),
        "encoder.second_conv.3.weight": (256, 512, 1), "reduce_dim.weight": (384, 256), "cls_token": (1, 1, 384),
        "cls_pos": (1, 1, 384), "pos_embed.0.weight": (128, 3), "pos_embed.2.weight": (384, 128),
        "blocks.blocks.0.norm1.weight": (384,), "blocks.blocks.11.attn.qkv.weight": (1152, 384),
        "blocks.blocks.11.attn.proj.bias": (384,), "blocks.blocks.5.mlp.fc1.weight": (1536, 384),
        "blocks.blocks.5.mlp.fc2.weight": (384, 1536), "norm.bias": (384,),
    },
    "openshape_pointbert_b32": {
        "sa.mlp_convs.0.weight": (64, 9, 1, 1), "sa.mlp_convs.2.weight": (128, 64, 1, 1),
        "sa.mlp_bns.2.running_mean": (128,), "lift.0.weight": (512, 131, 1), "lift.0.bias": (512,),
        "lift.2.weight": (512,), "cls_token": (512,), "transformer.layers.0.0.norm.weight": (512,),
        "transformer.layers.11.0.fn.to_qkv.weight": (1536, 512),
        "transformer.layers.0.0.fn.to_out.0.weight": (512, 512),
        "transformer.layers.0.1.norm.bias": (512,), "transformer.layers.3.1.fn.net.0.weight": (1024, 512),
        "transformer.layers.3.1.fn.net.3.weight": (512, 1024),
    },
    "openshape_pointbert_g14": {
        "sa.mlp_convs.2.weight": (256, 64, 1, 1), "lift.0.weight": (512, 259, 1),
        "transformer.layers.11.1.fn.net.0.weight": (1536, 512), "proj.weight": (1280, 512), "proj.bias": (1280,),
    },
}
ABSENT = {  # keys the originals do not have
    "pointbert": ["blocks.blocks.0.attn.qkv.bias", "cls_head_finetune.0.weight", "mask_token"],
    "openshape_pointbert_b32": ["transformer.layers.0.0.fn.to_qkv.bias", "proj.weight", "norm.weight"],
}


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cloud(b: int = 2, n: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True) * torch.rand(b, n, 1, generator=g) ** (1 / 3)


@pytest.fixture(scope="module")
def full_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_backbone(name) for name in PARAMS}


# ------------------------------------------------------------------------------------- sizes and state dicts
@pytest.mark.parametrize("name", list(PARAMS))
def test_exact_parameter_counts_and_output_width(full_models, name):
    model = full_models[name]
    assert _n(model) == PARAMS[name]
    assert model.out_channels == OUT[name]


def test_ulip2_pointbert_is_six_more_layers_and_rgb():
    # ULIP-2's colored PointTransformer: 18 layers, first conv 6 -> 128 (3 more inputs x 128)
    model = build_backbone("pointbert_ulip2")
    layer = 1_773_312  # 2 LayerNorms + qkv 384x1152 + proj + MLP 384->1536->384
    assert _n(model) == PARAMS["pointbert"] + 6 * layer + 3 * 128
    assert model.in_channels == 6 and model.state_dict()["encoder.first_conv.0.weight"].shape == (128, 6, 1)


@pytest.mark.parametrize("name", list(SHAPES))
def test_state_dict_keys_and_shapes_are_the_originals(full_models, name):
    sd = full_models[name].state_dict()
    for key, shape in SHAPES[name].items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    for key in ABSENT.get(name, []):
        assert key not in sd, key


def test_state_dict_key_counts(full_models):
    # PointNet++: 3 SAs x 3 layers x (conv w, b + BN w, b, mean, var, count) + 2 x (fc w, b + BN 5)
    assert len(full_models["pointnet2_ssg"].state_dict()) == 9 * 7 + 2 * 7
    # Point-BERT: encoder 2 x (2 convs x 2 + BN 5) + reduce 2 + cls 2 + pos 4 + 12 x (LN 2 + qkv 1 + proj 2 + LN 2
    # + fc1 2 + fc2 2) + norm 2
    assert len(full_models["pointbert"].state_dict()) == 18 + 2 + 2 + 4 + 12 * 11 + 2
    # PPAT B32: SA 3 x 7 + lift 4 + cls 1 + 12 x (LN 2 + qkv 1 + out 2 + LN 2 + 2 x 2); G14 + proj 2
    assert len(full_models["openshape_pointbert_b32"].state_dict()) == 21 + 4 + 1 + 12 * 11
    assert len(full_models["openshape_pointbert_g14"].state_dict()) == 21 + 4 + 1 + 12 * 11 + 2


@pytest.mark.parametrize("small, full", [("pointnet2_ssg_small", "pointnet2_ssg"), ("pointbert_small", "pointbert"),
                                         ("openshape_pointbert_b32_small", "openshape_pointbert_b32")])
def test_small_presets_keep_the_full_models_tensor_shapes(full_models, small, full):
    s, f = build_backbone(small).state_dict(), full_models[full].state_dict()
    assert set(s) <= set(f)
    assert all(s[k].shape == f[k].shape for k in s)
    if small == "pointnet2_ssg_small":
        assert set(s) == set(f)


def test_full_size_forward_on_tiny_inputs(full_models):
    x = _cloud(1, 512, seed=3)
    with torch.no_grad():
        assert full_models["pointnet2_ssg"].eval()(x).shape == (1, 256)
        rgb = torch.cat([x, torch.full_like(x, 0.4)], dim=-1).transpose(1, 2)
        assert full_models["openshape_pointbert_b32"].eval()(x[:, :256], rgb[..., :256]).shape == (1, 512)


# ------------------------------------------------------------------------------------- layers vs references
def test_transformer_layer_matches_both_originals_attention_layouts():
    """Point-BERT reshapes qkv as (B, N, 3, heads, d); OpenShape chunks it in 3 and splits (h d): same numbers."""
    torch.manual_seed(0)
    dim, heads, mlp = 24, 3, 40
    ln1, ln2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
    qkv, proj = torch.nn.Linear(dim, 3 * dim, bias=False), torch.nn.Linear(dim, dim)
    fc1, fc2 = torch.nn.Linear(dim, mlp), torch.nn.Linear(mlp, dim)
    for m in (ln1, ln2):
        torch.nn.init.normal_(m.weight)
        torch.nn.init.normal_(m.bias)
    x = torch.randn(2, 7, dim)

    def pointbert_attn(h):
        B, N, C = h.shape
        q, k, v = qkv(h).reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
        a = ((q @ k.transpose(-2, -1)) * (C // heads) ** -0.5).softmax(-1)
        return proj((a @ v).transpose(1, 2).reshape(B, N, C))

    def openshape_attn(h):
        B, N, _ = h.shape
        q, k, v = (t.reshape(B, N, heads, -1).transpose(1, 2) for t in qkv(h).chunk(3, dim=-1))
        a = (q @ k.transpose(-1, -2) * (dim // heads) ** -0.5).softmax(-1)
        return proj((a @ v).transpose(1, 2).reshape(B, N, -1))

    for attn in (pointbert_attn, openshape_attn):
        ref = x + attn(ln1(x))
        ref = ref + fc2(F.gelu(fc1(ln2(ref))))
        with torch.no_grad():
            assert torch.allclose(pre_norm_layer(x, ln1, qkv, proj, heads, ln2, fc1, fc2), ref, atol=1e-5)


def test_set_abstraction_matches_the_grouped_convolution():
    """The split first convolution (W_p p_j + W_f f_j - W_p c) equals conv2d on the grouped [p_j - c, f_j]."""
    torch.manual_seed(1)
    sa = randomise(PointNetSetAbstraction(16, 0.5, 8, 3 + 5, (6, 7)))
    xyz, feats = _cloud(2, 64, seed=1), torch.randn(2, 64, 5)
    new_xyz, out = sa(xyz, feats)
    idx = furthest_point_sample(xyz, 16)
    assert torch.equal(new_xyz, gather_points(xyz, idx))
    nbr = ball_query(xyz, new_xyz, 0.5, 8)
    grouped = torch.cat([gather_points(xyz, nbr.flatten(1)).view(2, 16, 8, 3) - new_xyz[:, :, None],
                         gather_points(feats, nbr.flatten(1)).view(2, 16, 8, 5)], dim=-1)
    h = grouped.permute(0, 3, 2, 1)  # (B, C, K, S) as the original
    for conv, bn in zip(sa.mlp_convs, sa.mlp_bns):
        h = F.relu(bn(conv(h)))
    assert torch.allclose(out, h.max(dim=2).values.transpose(1, 2), atol=1e-5)
    # "group all": absolute coordinates + features, one output "point" at the origin
    sa3 = randomise(PointNetSetAbstraction(None, None, None, 3 + 5, (4,), group_all=True))
    c, g = sa3(xyz, feats)
    ref = F.relu(sa3.mlp_bns[0](sa3.mlp_convs[0](torch.cat([xyz, feats], -1).transpose(1, 2)[..., None])))
    assert torch.equal(c, torch.zeros(2, 1, 3)) and torch.allclose(g[:, 0], ref.amax(dim=(2, 3)), atol=1e-5)


def test_pointbert_groups_are_centred_nearest_neighbourhoods():
    model = build_backbone("pointbert_small", in_channels=6, constant_rgb=0.4)
    xyz = _cloud(2, 96, seed=2)
    rgb = torch.rand(2, 96, 3)
    groups, centres = model.group(xyz, torch.cat([xyz, rgb], -1))
    assert groups.shape == (2, 32, 16, 6) and centres.shape == (2, 32, 3)
    assert torch.equal(centres, gather_points(xyz, furthest_point_sample(xyz, 32)))
    d = torch.cdist(centres, xyz)  # the K nearest of each centre, centred; rgb carried along
    idx = knn(xyz, centres, 16)
    assert torch.allclose(d.gather(2, idx), d.topk(16, largest=False).values, atol=1e-6)
    assert torch.allclose(groups[..., :3], gather_points(xyz, idx.flatten(1)).view(2, 32, 16, 3) - centres[:, :, None])
    assert torch.equal(groups[..., 3:], gather_points(rgb, idx.flatten(1)).view(2, 32, 16, 3))
    assert torch.equal(groups[:, :, 0, :3], torch.zeros(2, 32, 3))  # each centre is its own nearest point


# ------------------------------------------------------------------------------------- forward contracts
# one transformer layer: every tensor kind still takes part (test_model_configs_build_the_presets runs the presets)
SMALL = [("pointnet2_ssg_small", {}), ("pointbert_small", {"depth": 1}),
         ("openshape_pointbert_b32_small", {"depth": 1, "constant_rgb": 0.4})]


@pytest.mark.parametrize("name, kw", SMALL)
def test_small_presets_forward_backward_and_batch_independence(name, kw):
    torch.manual_seed(0)
    enc = build_point_encoder(name, embed_dim=16, head_mlps=[], **kw)
    x = _cloud(3, enc.encoder.min_points, seed=5)
    enc.train()
    out = enc(x)
    assert out.shape == (3, 16) and torch.isfinite(out).all()
    out.square().mean().backward()
    unused = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not unused, unused  # every tensor takes part
    enc.eval()
    with torch.no_grad():
        full = enc(x)
        assert torch.allclose(full[1:2], enc(x[1:2]), atol=1e-5)  # eval: no batch coupling
        assert torch.equal(full, enc(x))  # deterministic (FPS starts at point 0)


def test_constant_rgb_is_explicit():
    torch.manual_seed(0)
    x = _cloud(2, 32, seed=6)
    with pytest.raises(DataError, match="constant_rgb=0.4"):
        build_backbone("openshape_pointbert_b32_small", depth=1)(x)  # no colour and no constant: refuse, never invent
    model = build_backbone("openshape_pointbert_b32_small", depth=1, constant_rgb=0.4).eval()
    grey = torch.cat([x, torch.full_like(x, 0.4)], dim=-1).transpose(1, 2)
    with torch.no_grad():
        assert torch.equal(model(x), model(x, grey))
        assert not torch.allclose(model(x), model(x, torch.cat([x, torch.rand_like(x)], -1).transpose(1, 2)))
    with pytest.raises(ConfigError, match="in_channels=6"):
        build_backbone("pointbert_small", constant_rgb=0.4)
    with pytest.raises(ConfigError, match="grey value"):
        build_backbone("openshape_pointbert_b32_small", constant_rgb=1.5)


def test_extra_channels_reach_the_first_layer_of_pointnet2_and_pointbert():
    x = _cloud(1, 128, seed=7)
    for name, kw in (("pointnet2_ssg_small", {}), ("pointbert_small", {"depth": 1})):
        model = randomise(build_backbone(name, in_channels=6, **kw))
        normals = torch.randn(1, 128, 3)
        f1 = torch.cat([x, normals], -1).transpose(1, 2)
        f2 = torch.cat([x + 5.0, normals], -1).transpose(1, 2)  # the coordinate channels of features are unused
        f3 = torch.cat([x, -normals], -1).transpose(1, 2)
        with torch.no_grad():
            assert torch.allclose(model(x, f1), model(x, f2), atol=1e-5), name
            assert not torch.allclose(model(x, f1), model(x, f3), atol=1e-4), name


@pytest.mark.parametrize("name, n, match",
                         [("pointnet2_ssg", 256, "at least 512"), ("pointbert_small", 16, "at least 32"),
                                            ("openshape_pointbert_b32_small", 31, "at least 32")])
def test_too_few_points_and_bad_inputs_name_the_problem(name, n, match):
    model = build_backbone(name, **({"constant_rgb": 0.4} if "openshape" in name else {}))
    with pytest.raises(DataError, match=match):
        model(_cloud(1, n))
    with pytest.raises(DataError, match=r"\(B, N, 3\)"):
        model(torch.zeros(2, 64))
    bad = _cloud(1, 128)
    bad[0, 3, 1] = math.nan
    with pytest.raises(DataError, match="NaN"):
        model(bad) if n <= 128 else model(torch.cat([bad] * 4, 1))
    with pytest.raises(DataError, match="features must have shape"):
        model(_cloud(1, 512), torch.zeros(1, 5, 512))


def test_drop_path_only_in_training():
    model = randomise(build_backbone("pointbert_small", depth=2, drop_path_rate=0.5))
    x = _cloud(4, 32, seed=8)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        torch.manual_seed(0)
        a = model.train()(x)
        torch.manual_seed(1)
        assert not torch.allclose(a, model(x))


# ------------------------------------------------------------------------------------- registry
def test_registry_builds_every_kind_by_name():
    names = list_encoders()
    for name, cls in [("pointnet2_ssg", PointNet2SSG), ("pointnet2_ssg_small", PointNet2SSG), ("pointbert", PointBERT),
                      ("pointbert_small", PointBERT), ("pointbert_ulip2", PointBERT),
                      ("openshape_pointbert_b32", PointPatchTransformer),
                      ("openshape_pointbert_g14", PointPatchTransformer),
                      ("openshape_pointbert_b32_small", PointPatchTransformer)]:
        assert name in names and backbone_class(name) is cls
    assert encoder_config("pointbert_small", depth=2) == {"num_group": 32, "group_size": 16, "depth": 2}
    with pytest.raises(ConfigError, match=r"unknown PointBERT option\(s\) \['width'\].*valid: .*num_group"):
        build_backbone("pointbert", width=3)
    with pytest.raises(ConfigError, match="unknown point encoder 'pointbert_xl'.*pointnet2_ssg"):
        build_backbone("pointbert_xl")
    # the head: ULIP's single projection, or none (OpenShape B32 ends in its 512-d space)
    enc = build_point_encoder("openshape_pointbert_b32_small", embed_dim=512, head_mlps=[], head_projection=False,
                              constant_rgb=0.4)
    assert _n(enc.head) == 0 and enc.out_dim == 512
    with pytest.raises(ConfigError, match="without the final projection the embedding is 512-d"):
        build_point_encoder("openshape_pointbert_b32_small", embed_dim=64, head_mlps=[], head_projection=False)
    assert (_n(build_point_encoder("pointnet2_ssg", embed_dim=512, head_mlps=[]))
            == PARAMS["pointnet2_ssg"] + 256 * 512 + 512)


def test_model_configs_build_the_presets():
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from captionless3d.hydra_utils import CONFIG_DIR, instantiate

    expect = {"pointnet2_ssg_small": (PointNet2SSG, 3), "pointbert_small": (PointBERT, 3),
              "openshape_pointbert_b32_small": (PointPatchTransformer, 6)}
    with initialize_config_dir(config_dir=str(Path(CONFIG_DIR)), version_base="1.3"):
        for name, (cls, channels) in expect.items():
            cfg = compose(config_name="train", overrides=[f"model={name}", "experiment=baseline"])
            assert cfg.model.name == name
            enc = instantiate(cfg.model, key="model", embed_dim=24)
            assert isinstance(enc.encoder, cls) and enc.encoder.in_channels == channels and enc.out_dim == 24
            with torch.no_grad():
                assert enc.eval()(_cloud(1, 128)).shape == (1, 24)  # xyz only, as the data module feeds
        cfg = compose(config_name="train", overrides=["model=openshape_pointbert_b32"])
        assert cfg.model.constant_rgb == 0.4 and cfg.model.in_channels == 6
