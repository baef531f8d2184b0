"""Released-weight baseline rows (``configs/baseline/{ulip_pointnet2,ulip_pointbert,openshape_pointbert_b32,
clip2point}.yaml``) built through their Hydra configs around a teacher, from fixture files in the released layouts:
same outputs as the source weights, the embedding-width check naming the teacher each release was trained with, a
run through the evaluation harness, and CLIP2Point's depth encoder in an OpenCLIP visual tower."""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fixtures.released import clip2point_checkpoint, openshape_release_b32, randomise, ulip_checkpoint
from omegaconf import OmegaConf

from captionless3d.baselines.clip2point import create_clip2point
from captionless3d.baselines.pointclip import create_pointclip
from captionless3d.errors import CheckpointError, ConfigError
from captionless3d.hydra_utils import CONFIG_DIR, instantiate
from captionless3d.models import build_backbone, build_point_encoder

DIM = 24
#: conftest.py's micro OpenCLIP architecture with OpenAI CLIP's activation (QuickGELU), as CLIP2Point's tower
QUICKGELU_CONFIG = {
    "embed_dim": 32, "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _cfg(row: str, pretrained: Path, **changes):
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "baseline" / f"{row}.yaml")[row]
    cfg.pretrained = str(pretrained)
    for key, value in changes.items():
        cfg[key] = value
    return cfg


def _cloud(b: int = 2, n: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True) * torch.rand(b, n, 1, generator=g) ** (1 / 3)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Fixture files of the three releases (small presets: the same tensor shapes as the releases' first layers)."""
    root = tmp_path_factory.mktemp("released")
    out = {}
    for key, name, kw in (("ulip_pointnet2", "pointnet2_ssg_small", {}),
                          ("ulip_pointbert", "pointbert_small", {"depth": 2})):
        src = randomise(build_point_encoder(name, embed_dim=DIM, head_mlps=[], head_dropout=0.0, **kw))
        with torch.no_grad():
            src.head.head[-1][0].bias.zero_()
        torch.save(ulip_checkpoint(src), root / f"{key}.pt")
        out[key] = (src, root / f"{key}.pt")
    ppat = randomise(build_backbone("openshape_pointbert_b32_small", depth=2, constant_rgb=0.4), seed=2)
    torch.save(openshape_release_b32(ppat), root / "openshape_b32.pt")
    out["openshape_pointbert_b32"] = (ppat, root / "openshape_b32.pt")
    return out


SMALL = {"ulip_pointnet2": {"name": "pointnet2_ssg_small"}, "ulip_pointbert": {"name": "pointbert_small", "depth": 2},
         "openshape_pointbert_b32": {"name": "openshape_pointbert_b32_small", "depth": 2}}


@pytest.mark.parametrize("row", list(SMALL))
def test_config_builds_the_release_and_reproduces_it(files, row):
    src, path = files[row]
    dim = 512 if row == "openshape_pointbert_b32" else DIM
    encoder = instantiate(_cfg(row, path, **SMALL[row]), key=f"baseline.{row}",
                          teacher=SimpleNamespace(dim=dim, id="t"))
    assert not encoder.training
    x = _cloud()
    with torch.no_grad():
        assert torch.allclose(encoder(x), src.eval()(x), atol=1e-5)
    if row == "openshape_pointbert_b32":  # no projection: the backbone's 512-d output is the embedding
        assert encoder.encoder.constant_rgb == 0.4 and sum(p.numel() for p in encoder.head.parameters()) == 0


@pytest.mark.parametrize("row, teacher", [("ulip_pointnet2", "SLIP ViT-B/16"), ("ulip_pointbert", "SLIP ViT-B/16"),
                                          ("openshape_pointbert_b32", "OpenAI CLIP ViT-B/32")])
def test_width_check_names_the_teacher_the_release_was_trained_with(files, row, teacher):
    _, path = files[row]
    other = SimpleNamespace(dim=1280, id="openclip:ViT-bigG-14:laion2b_s39b_b160k")
    with pytest.raises(CheckpointError) as err:
        instantiate(_cfg(row, path, **SMALL[row]), key=f"baseline.{row}", teacher=other)
    msg = str(err.value)
    width = 512 if row == "openshape_pointbert_b32" else DIM
    assert f"embeds into a {width}-d space" in msg and "ViT-bigG-14:laion2b_s39b_b160k, is 1280-d" in msg
    assert f"trained against {teacher}" in msg and str(path) in msg


def test_matching_width_with_another_teacher_warns(files, caplog):
    _, path = files["openshape_pointbert_b32"]
    cfg = _cfg("openshape_pointbert_b32", path, **SMALL["openshape_pointbert_b32"])
    with caplog.at_level(logging.WARNING, logger="captionless3d.baselines.pretrained"):
        instantiate(cfg, key="b", teacher=SimpleNamespace(dim=512, id="openclip:ViT-B-32:laion2b_s34b_b79k"))
    assert "trained against OpenAI CLIP ViT-B/32" in caplog.text and "another joint space" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="captionless3d.baselines.pretrained"):
        instantiate(cfg, key="b", teacher=SimpleNamespace(dim=512, id="openclip:ViT-B-32-quickgelu:openai"))
    assert not caplog.text


def test_missing_file_and_unknown_release_are_clear(tmp_path):
    cfg = _cfg("ulip_pointbert", tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="missing.pt.*does not exist"):
        instantiate(cfg, key="baseline.ulip_pointbert", teacher=SimpleNamespace(dim=512, id="t"))
    cfg.release = "ulip3"
    with pytest.raises(ConfigError, match="unknown release 'ulip3'"):
        instantiate(cfg, key="baseline.ulip_pointbert", teacher=SimpleNamespace(dim=512, id="t"))


def test_eval_composes_the_three_rows_and_clip2point():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[
            "baseline=[ulip_pointnet2,ulip_pointbert,openshape_pointbert_b32,clip2point]",
            "baseline.ulip_pointbert.pretrained=/x/pointbert.pt"])
    assert list(cfg.baseline) == ["ulip_pointnet2", "ulip_pointbert", "openshape_pointbert_b32", "clip2point"]
    assert cfg.baseline.ulip_pointbert.pretrained == "/x/pointbert.pt"
    assert OmegaConf.is_missing(cfg.baseline.ulip_pointnet2, "pretrained")  # must be given


def test_release_row_through_the_evaluation_harness(files, tiny_world, tiny_features, micro_teacher, tmp_path):
    """What ``eval.evaluate_baseline`` does: build around the teacher, then the benchmark protocols."""
    from captionless3d.evaluation.runner import evaluate_encoder

    src = randomise(build_point_encoder("pointnet2_ssg_small", embed_dim=micro_teacher.dim, head_mlps=[],
                                        head_dropout=0.0), seed=5)
    with torch.no_grad():
        src.head.head[-1][0].bias.zero_()
    torch.save(ulip_checkpoint(src), tmp_path / "pn2.pt")
    enc = instantiate(_cfg("ulip_pointnet2", tmp_path / "pn2.pt", name="pointnet2_ssg_small"), key="b",
                      teacher=micro_teacher)
    scores = evaluate_encoder(enc, tiny_world, tiny_features, n_points=128, batch_size=4,
                              protocols=("zeroshot", "retrieval")).metrics
    assert 0.0 <= scores["zeroshot/top1"] <= 100.0 and "retrieval/nobg/gallery/i2s_r1" in scores


# ------------------------------------------------------------------------------------------------ CLIP2Point
@pytest.fixture(scope="module")
def quickgelu_teacher():
    from captionless3d.teacher.openclip import create_teacher

    torch.set_num_threads(1)
    return create_teacher("test-clip-micro-quickgelu", model_config=QUICKGELU_CONFIG, seed=0)


@pytest.fixture(scope="module")
def clip2point_file(quickgelu_teacher, tmp_path_factory):
    depth = randomise(copy.deepcopy(quickgelu_teacher.model.visual), seed=9)
    path = tmp_path_factory.mktemp("clip2point") / "best_eval.pth"
    torch.save(clip2point_checkpoint(depth, quickgelu_teacher.model.visual), path)
    return depth, path


def test_clip2point_depth_encoder_replaces_the_visual_tower(quickgelu_teacher, clip2point_file):
    depth, path = clip2point_file
    enc = instantiate(_cfg("clip2point", path, n_views=3), key="baseline.clip2point", teacher=quickgelu_teacher)
    x = _cloud(2, 200, seed=4)
    images = enc.render(x)  # (B, V, S, S, 3) uint8 depth maps, PointCLIP's projection
    pixels = quickgelu_teacher.preprocess_uint8(images.reshape(-1, *images.shape[2:]).numpy())
    with torch.no_grad():
        feats = depth(pixels)
    feats = (feats / feats.norm(dim=-1, keepdim=True)).view(2, 3, -1).sum(1)
    expected = feats / feats.norm(dim=-1, keepdim=True)
    out = enc(x)
    assert out.shape == (2, quickgelu_teacher.dim) and torch.allclose(out, expected, atol=1e-5)
    plain = create_pointclip(quickgelu_teacher, n_views=3)  # the teacher's own tower gives other embeddings
    assert not torch.allclose(plain(x), out, atol=1e-3)
    assert "clip2point:best_eval.pth" in enc.teacher.id


def test_clip2point_refuses_gelu_towers_and_foreign_files(micro_teacher, quickgelu_teacher, clip2point_file, tmp_path):
    _, path = clip2point_file
    with pytest.raises(ConfigError, match="GELU visual tower.*ViT-B-32-quickgelu"):
        create_clip2point(micro_teacher, pretrained=path)  # same keys and shapes, GELU activation
    other = tmp_path / "ulip.pt"
    torch.save({"state_dict": {"module.pc_projection": torch.zeros(3, 4)}}, other)
    with pytest.raises(CheckpointError, match="no CLIP2Point depth encoder"):
        create_clip2point(quickgelu_teacher, pretrained=other)
    state = torch.load(path, weights_only=True)
    state["module.point_model.proj"] = torch.zeros(16, 8)
    del state["module.point_model.ln_post.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(CheckpointError,
                       match=r"(?s)missing \(1\): ln_post.bias.*proj: checkpoint \(16, 8\) vs teacher"):
        create_clip2point(quickgelu_teacher, pretrained=bad)
    with pytest.raises(ConfigError, match="OpenCLIP teacher"):
        create_clip2point(SimpleNamespace(id="stub", dim=16, image_size=8), pretrained=path)
