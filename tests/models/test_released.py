"""Weight import for PointNet++ / Point-BERT / OpenShape (``captionless3d.models.released``): every released key
layout written by ``tests/fixtures/released.py`` from randomly initialised weights, loaded back and compared output
for output; the mismatch messages (key, file key, both shapes; the ULIP#60 case); bad files.

What this verifies is the key mapping and the shapes, not numerical parity with the original code (the released
files cannot be fetched here).
"""
from __future__ import annotations

import pytest
import torch
from fixtures.released import (
    openshape_release_b32,
    openshape_release_g14,
    openshape_release_l14,
    openshape_trainer_checkpoint,
    pointbert_finetuned_checkpoint,
    pointbert_pretrain_checkpoint,
    randomise,
    ulip_checkpoint,
)

from captionless3d.errors import CheckpointError
from captionless3d.models import build_backbone, build_point_encoder
from captionless3d.models.released import convert_state_dict, detect_layout, embedding_width, load_pretrained


def _cloud(b: int = 2, n: int = 64, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True) * torch.rand(b, n, 1, generator=g) ** (1 / 3)


def _ulip_source(name: str, dim: int, seed: int = 0, **kw) -> torch.nn.Module:
    enc = randomise(build_point_encoder(name, embed_dim=dim, head_mlps=[], head_dropout=0.0, **kw), seed=seed)
    with torch.no_grad():
        enc.head.head[-1][0].bias.zero_()  # ULIP's pc_projection has no bias
    return enc


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-5)


@pytest.fixture(scope="module")
def pointbert_src() -> torch.nn.Module:
    return _ulip_source("pointbert_small", 24, depth=2)


# ------------------------------------------------------------------------------------------------ ULIP-1 / ULIP-2
@pytest.mark.parametrize("name, kw", [("pointnet2_ssg_small", {}), ("pointbert_small", {"depth": 2})])
def test_ulip1_checkpoint_file_round_trip(tmp_path, name, kw):
    src = _ulip_source(name, 24, **kw)
    path = tmp_path / "ulip.pt"
    # {"state_dict": module.point_encoder.* + module.pc_projection + towers, "args"}
    torch.save(ulip_checkpoint(src), path)
    dst = build_point_encoder(name, embed_dim=24, head_mlps=[], **kw)
    report = load_pretrained(dst, path)
    assert report.layout == "ulip" and report.source == str(path)
    assert "head.head.0.0.weight" in report.loaded and len(report.loaded) == len(dst.state_dict())
    assert {"module.visual.cls_token", "module.logit_scale", "module.image_projection"}.isdisjoint(report.ignored)
    assert {"visual.cls_token", "logit_scale", "image_projection", "text_projection"} <= set(report.ignored)
    assert _same(src, dst, _cloud(n=src.encoder.min_points))
    sd = torch.load(path, weights_only=False)["state_dict"]
    assert detect_layout(sd) == "ulip" and embedding_width(sd) == 24
    assert sd["module.pc_projection"].shape == (src.encoder.out_channels, 24)


def test_full_size_ulip_shapes_map_without_a_forward():
    """The full presets' state dicts in ULIP's layout map key for key (no forward at full size)."""
    for name, width in (("pointnet2_ssg", 256), ("pointbert", 768)):
        src = build_point_encoder(name, embed_dim=512, head_mlps=[])
        ckpt = ulip_checkpoint(src)
        assert ckpt["state_dict"]["module.pc_projection"].shape == (width, 512)
        mapped, report = convert_state_dict(ckpt["state_dict"], build_point_encoder(name, embed_dim=512, head_mlps=[]))
        assert set(mapped) == set(src.state_dict()) and report.layout == "ulip"


def test_ulip2_checkpoint_with_rgb_and_1280_projection(tmp_path):
    src = _ulip_source("pointbert_small", 40, depth=2, in_channels=6, constant_rgb=0.4)
    ckpt = ulip_checkpoint(src, version=2)
    assert ckpt["state_dict"]["module.point_encoder.encoder.first_conv.0.weight"].shape == (128, 6, 1)
    dst = build_point_encoder("pointbert_small", embed_dim=40, head_mlps=[], depth=2, in_channels=6, constant_rgb=0.4)
    report = load_pretrained(dst, ckpt)
    assert "open_clip_model.visual.conv1.weight" in report.ignored
    assert _same(src, dst, _cloud())


def test_ulip60_the_3_channel_512_file_into_ulip2s_model(pointbert_src):
    """'pointbert_ULIP-2.pt' holds a 3-channel Point-BERT with a 768 x 512 projection (salesforce/ULIP#60)."""
    src = _ulip_source("pointbert_small", 512, depth=2)
    ulip2 = build_point_encoder("pointbert_small", embed_dim=1280, head_mlps=[], depth=2, in_channels=6,
                                constant_rgb=0.4)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(ulip2, ulip_checkpoint(src))
    msg = str(err.value)
    assert ("encoder.encoder.first_conv.0.weight <- point_encoder.encoder.first_conv.0.weight: checkpoint (128, 3, 1) "
            "vs model (128, 6, 1)") in msg
    assert "head.head.0.0.weight <- pc_projection.T: checkpoint (512, 768) vs model (1280, 768)" in msg
    assert "ULIP#60" in msg and "in_channels=3 and a 512-d teacher" in msg and "ViT-bigG-14" in msg
    # either half alone is still diagnosed as ULIP#60
    only_channels = build_point_encoder("pointbert_small", embed_dim=512, head_mlps=[], depth=2, in_channels=6)
    with pytest.raises(CheckpointError, match=r"(?s)ULIP#60.*3 input channels \(xyz\)"):
        load_pretrained(only_channels, ulip_checkpoint(src))


def test_other_mismatches_name_key_and_both_shapes(pointbert_src):
    ckpt = ulip_checkpoint(pointbert_src)
    deeper = build_point_encoder("pointbert_small", embed_dim=24, head_mlps=[], depth=3)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(11\): encoder.blocks.blocks.2.norm1.weight.*"
                                              r"the checkpoint has 2 transformer layers, the model 3"):
        load_pretrained(deeper, ckpt)
    wider = build_point_encoder("pointbert_small", embed_dim=32, head_mlps=[], depth=2)
    with pytest.raises(CheckpointError, match=r"head.head.0.0.weight <- pc_projection.T: checkpoint \(24, 768\) vs "
                                              r"model \(32, 768\)"):
        load_pretrained(wider, ckpt)
    hidden = build_point_encoder("pointbert_small", embed_dim=24, head_mlps=[256], depth=2)
    with pytest.raises(CheckpointError, match="no hidden head layers: build with head_mlps=\\[\\]"):
        load_pretrained(hidden, ckpt)
    pn2 = build_point_encoder("pointnet2_ssg_small", embed_dim=24, head_mlps=[], in_channels=6)
    with pytest.raises(CheckpointError, match=r"(?s)sa1.mlp_convs.0.weight: checkpoint \(64, 3, 1, 1\) vs model "
                                              r"\(64, 6, 1, 1\).*build it with in_channels=3"):
        load_pretrained(pn2, ulip_checkpoint(_ulip_source("pointnet2_ssg_small", 24)))
    # the backbone alone (head="none"): the projection is reported as ignored, not loaded
    report = load_pretrained(build_point_encoder("pointbert_small", embed_dim=7, head_mlps=[], depth=2), ckpt,
                             head="none")
    assert "pc_projection" in report.ignored and not any(k.startswith("head.") for k in report.loaded)


def test_wrong_family_and_bad_files_are_clear(tmp_path, pointbert_src):
    pn2 = build_point_encoder("pointnet2_ssg_small", embed_dim=24, head_mlps=[])
    with pytest.raises(CheckpointError, match="no weights of this PointNet2SSG found"):
        load_pretrained(pn2, ulip_checkpoint(pointbert_src))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint.*notes.txt"):
        load_pretrained(pn2, text)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(pn2, tmp_path / "missing.pt")
    empty = tmp_path / "empty.pt"
    torch.save({"epoch": 3, "args": None}, empty)
    with pytest.raises(CheckpointError, match="no state_dict found|no tensors"):
        load_pretrained(pn2, empty)
    truncated = dict(ulip_checkpoint(_ulip_source("pointnet2_ssg_small", 24))["state_dict"])
    del truncated["module.point_encoder.fc2.weight"]
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): encoder.fc2.weight"):
        load_pretrained(pn2, truncated)


# ------------------------------------------------------------------------------------------------ OpenShape
@pytest.fixture(scope="module")
def ppat_src() -> torch.nn.Module:
    return randomise(build_backbone("openshape_pointbert_b32_small", depth=2, constant_rgb=0.4), seed=3)


def test_openshape_b32_release_into_a_projection_free_encoder(ppat_src):
    sd = openshape_release_b32(ppat_src)  # pc_encoder.* (no projection)
    assert detect_layout(sd) == "openshape" and embedding_width(sd) == 512
    enc = build_point_encoder("openshape_pointbert_b32_small", embed_dim=512, head_mlps=[], head_projection=False,
                              depth=2, constant_rgb=0.4)
    report = load_pretrained(enc, sd)
    assert report.layout == "openshape" and not report.ignored
    x = _cloud()
    with torch.no_grad():
        assert torch.allclose(enc.eval()(x), ppat_src(x), atol=1e-5)
    bare = build_backbone("openshape_pointbert_b32_small", depth=2, constant_rgb=0.4)
    load_pretrained(bare, sd)
    assert _same(bare, ppat_src, x)
    # a head with a projection has nothing to load from this file
    projected = build_point_encoder("openshape_pointbert_b32_small", embed_dim=64, head_mlps=[], depth=2,
                                    constant_rgb=0.4)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(2\): head.head.0.0.weight.*head_projection=False"):
        load_pretrained(projected, sd)


def test_openshape_trainer_and_l14_layouts_put_proj_in_the_head(tmp_path, ppat_src):
    proj = torch.nn.Linear(512, 48)
    x = _cloud()
    with torch.no_grad():
        expected = proj(ppat_src(x))
    path = tmp_path / "latest.pt"
    torch.save(openshape_trainer_checkpoint(ppat_src, proj), path)  # {"state_dict": module.ppat.* + module.proj.*}
    for source in (path, openshape_release_l14(ppat_src, proj)):
        enc = build_point_encoder("openshape_pointbert_b32_small", embed_dim=48, head_mlps=[], depth=2,
                                  constant_rgb=0.4)
        report = load_pretrained(enc, source)
        assert report.layout == "openshape" and {"head.head.0.0.weight", "head.head.0.0.bias"} <= set(report.loaded)
        with torch.no_grad():
            assert torch.allclose(enc.eval()(x), expected, atol=1e-5)
    assert embedding_width(torch.load(path, weights_only=True)["state_dict"]) == 48


def test_openshape_g14_release_keeps_proj_in_the_backbone():
    src = randomise(build_backbone("openshape_pointbert_g14", patches=32, nsample=32, depth=1, constant_rgb=0.4))
    sd = openshape_release_g14(src)  # module.ppat.* + module.proj.*
    assert sd["module.proj.weight"].shape == (1280, 512) and embedding_width(sd) == 1280
    dst = build_point_encoder("openshape_pointbert_g14", embed_dim=1280, head_mlps=[], head_projection=False,
                              patches=32, nsample=32, depth=1, constant_rgb=0.4)
    report = load_pretrained(dst, sd)
    assert "encoder.proj.weight" in report.loaded
    assert _same(dst, src, _cloud(1, 64))
    # the full-size G14 release's tensors map onto the full preset key for key
    full = build_backbone("openshape_pointbert_g14")
    mapped, _ = convert_state_dict(openshape_release_g14(full), build_backbone("openshape_pointbert_g14"))
    assert set(mapped) == set(full.state_dict())


def test_openshape_release_mismatch_names_the_other_release(ppat_src):
    g14_like = randomise(build_backbone("openshape_pointbert_g14", patches=32, nsample=32, depth=2, proj_dim=None,
                                        constant_rgb=0.4))
    with pytest.raises(CheckpointError, match=r"set-abstraction width 256 in the file vs 128 in the model"):
        load_pretrained(build_backbone("openshape_pointbert_b32_small", depth=2, constant_rgb=0.4),
                        openshape_release_b32(g14_like))
    with pytest.raises(CheckpointError, match=r"(?s)sa.mlp_convs.0.weight: checkpoint \(64, 9, 1, 1\) vs model "
                                              r"\(64, 6, 1, 1\).*in_channels=6"):
        load_pretrained(build_backbone("openshape_pointbert_b32_small", depth=2, in_channels=3),
                        openshape_release_b32(ppat_src))


# ------------------------------------------------------------------------------------------------ Point-BERT
def test_pointbert_pretraining_and_finetuned_checkpoints(tmp_path, pointbert_src):
    encoder = pointbert_src.encoder
    x = _cloud()
    path = tmp_path / "Point-BERT.pth"
    torch.save(pointbert_pretrain_checkpoint(encoder), path)  # {"base_model": module.transformer_q.* + heads + dvae}
    dst = build_backbone("pointbert_small", depth=2)
    report = load_pretrained(dst, path)
    assert report.layout == "pointbert"
    assert {"transformer_q.mask_token", "transformer_q.lm_head.weight", "transformer_q.cls_head.0.weight",
            "transformer_k.cls_token", "dvae.codebook"} <= set(report.ignored)
    assert _same(dst, encoder, x)
    fine = build_backbone("pointbert_small", depth=2)
    report = load_pretrained(fine, pointbert_finetuned_checkpoint(encoder))  # {"base_model": module.<encoder> + head}
    assert report.layout == "backbone" and "cls_head_finetune.0.weight" in report.ignored
    assert _same(fine, encoder, x)
    # Point-BERT weights initialise the backbone of a trainable encoder (head left as built)
    enc = build_point_encoder("pointbert_small", embed_dim=16, head_mlps=[], depth=2)
    report = load_pretrained(enc, path, head="none")
    assert all(k.startswith("encoder.") for k in report.loaded)


def test_our_own_checkpoint_layouts(tmp_path, pointbert_src):
    # PointEncoder.state_dict() and a Lightning checkpoint of the training module (keys "encoder.encoder.*")
    sd = pointbert_src.state_dict()
    lightning = {"state_dict": {"encoder." + k: v for k, v in sd.items()} | {"loss.scale": torch.tensor(2.3)},
                 "captionless3d": {"format_version": 1}}
    x = _cloud()
    for source in (sd, lightning):
        dst = build_point_encoder("pointbert_small", embed_dim=24, head_mlps=[], depth=2)
        report = load_pretrained(dst, source)
        assert report.layout == "captionless3d" and _same(dst, pointbert_src, x)
    assert embedding_width(lightning["state_dict"]) == 24
    # build_point_encoder(pretrained=<file>) goes through the same loader
    path = tmp_path / "ours.ckpt"
    torch.save(lightning, path)
    built = build_point_encoder("pointbert_small", embed_dim=24, head_mlps=[], depth=2, pretrained=str(path))
    assert _same(built, pointbert_src, x)
    # PointNeXt models still go to their own loader (models.weights)
    with pytest.raises(CheckpointError, match=r"missing keys \(\d+\): encoder.encoder.0.0.convs.0.0.weight"):
        load_pretrained(build_point_encoder("pointnext_s", embed_dim=24), lightning)
