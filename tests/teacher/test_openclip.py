from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from captionless3d.errors import CheckpointError, ConfigError, DataError
from captionless3d.teacher.base import Teacher
from captionless3d.teacher.openclip import create_teacher

TINY_NAME = "test-clip-micro"  # registered by conftest.tiny_teacher / tiny_config


def _images(n=5, size=32, seed=0):
    return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_encode_shapes_normalised_and_protocol(tiny_teacher):
    assert isinstance(tiny_teacher, Teacher)
    assert tiny_teacher.dim == 32 and tiny_teacher.image_size == 32
    assert "mean=" in tiny_teacher.preprocess_id and "bicubic" in tiny_teacher.preprocess_id
    img = tiny_teacher.encode_images(_images(5), batch_size=2)
    txt = tiny_teacher.encode_texts(["a chair", "a table", "a lamp"], batch_size=2)
    assert img.shape == (5, 32) and txt.shape == (3, 32)
    assert img.dtype == torch.float32 and not img.requires_grad
    torch.testing.assert_close(img.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(3))
    assert tiny_teacher.encode_images(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 32)
    assert tiny_teacher.encode_texts([]).shape == (0, 32)


def test_batching_and_determinism(tiny_teacher, tiny_config):
    TINY_CONFIG = tiny_config
    x = _images(7)
    a = tiny_teacher.encode_images(x, batch_size=3)
    b = tiny_teacher.encode_images(x, batch_size=7)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    again = create_teacher(TINY_NAME, model_config=TINY_CONFIG, seed=0)
    assert again.id == tiny_teacher.id
    torch.testing.assert_close(again.encode_images(x), a, atol=1e-6, rtol=0)
    other = create_teacher(TINY_NAME, model_config=TINY_CONFIG, seed=1)
    assert other.id != tiny_teacher.id
    assert not torch.allclose(other.encode_images(x), a)


def test_uint8_fast_path_matches_openclip_pil_transform(tiny_teacher):
    x = _images(4)
    pil = [Image.fromarray(im) for im in x]
    torch.testing.assert_close(tiny_teacher.encode_images(x), tiny_teacher.encode_images(pil), atol=1e-5, rtol=0)
    # a different, non-square resolution: batched torch resize+crop ~ PIL within a few grey levels (smooth image)
    yy, xx = np.mgrid[0:48, 0:60]
    smooth = np.stack([(yy * 5) % 256, (xx * 4) % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)[None]
    ours = tiny_teacher.preprocess_uint8(smooth)
    ref = tiny_teacher.pil_preprocess(Image.fromarray(smooth[0]))[None]
    std = torch.tensor(tiny_teacher.std).view(1, 3, 1, 1)
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    assert ((ours - ref).abs() * std * 255).mean() < 1.5


def test_bad_image_input_is_a_data_error(tiny_teacher):
    with pytest.raises(DataError, match="uint8"):
        tiny_teacher.encode_images(np.zeros((2, 32, 32, 3), np.float32))
    with pytest.raises(DataError):
        tiny_teacher.encode_texts("a chair")


def test_checkpoint_round_trip(tiny_teacher, tiny_config, tmp_path):
    TINY_CONFIG = tiny_config
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_teacher.model.state_dict()}, path)
    config = tmp_path / "cfg.json"
    import json

    config.write_text(json.dumps(TINY_CONFIG))
    loaded = create_teacher(TINY_NAME, checkpoint=path, model_config=config, seed=123)
    assert loaded.id.startswith(f"openclip:{TINY_NAME}:sha256:") and len(loaded.id.rsplit(":", 1)[1]) == 12
    x = _images(3)
    torch.testing.assert_close(loaded.encode_images(x), tiny_teacher.encode_images(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(loaded.encode_texts(["a cup"]), tiny_teacher.encode_texts(["a cup"]), atol=1e-6, rtol=0)
    via_pretrained = create_teacher(TINY_NAME, pretrained=str(path), model_config=TINY_CONFIG)
    assert via_pretrained.id == loaded.id


def test_missing_checkpoint_names_the_path(tiny_config, tmp_path):
    TINY_CONFIG = tiny_config
    missing = tmp_path / "nope" / "model.pt"
    with pytest.raises(CheckpointError, match="nope/model.pt"):
        create_teacher(TINY_NAME, checkpoint=missing, model_config=TINY_CONFIG)
    with pytest.raises(CheckpointError, match="nope/model.pt"):
        create_teacher(TINY_NAME, pretrained=str(missing), model_config=TINY_CONFIG)


def test_incompatible_checkpoint_is_a_checkpoint_error(tiny_config, tmp_path):
    TINY_CONFIG = tiny_config
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": {"visual.conv1.weight": torch.zeros(3)}}, path)
    with pytest.raises(CheckpointError, match="bad.pt"):
        create_teacher(TINY_NAME, checkpoint=path, model_config=TINY_CONFIG)


def test_unknown_names_and_tags_are_config_errors(tiny_config):
    TINY_CONFIG = tiny_config
    with pytest.raises(ConfigError, match="list_models"):
        create_teacher("no-such-clip-arch")
    with pytest.raises(ConfigError, match="laion2b_s34b_b79k"):
        create_teacher("ViT-B-32", pretrained="no_such_tag")
    with pytest.raises(ConfigError, match="either"):
        create_teacher(TINY_NAME, pretrained="x.pt", checkpoint="y.pt", model_config=TINY_CONFIG)
    with pytest.raises(ConfigError, match="already an OpenCLIP architecture"):
        create_teacher("ViT-B-32", model_config=TINY_CONFIG)
    with pytest.raises(ConfigError, match="embed_dim"):
        create_teacher("broken-cfg", model_config={"vision_cfg": {}})


def test_pretrained_download_offline_is_a_checkpoint_error(monkeypatch):
    import time

    t0 = time.perf_counter()
    try:
        teacher = create_teacher("ViT-B-32", pretrained="laion2b_s34b_b79k")
    except CheckpointError as exc:
        assert "not available" in str(exc) and "checkpoint=" in str(exc)
    else:  # the weights happen to be in the local HF cache
        assert teacher.id == "openclip:ViT-B-32:laion2b_s34b_b79k"
    assert time.perf_counter() - t0 < 30


@pytest.mark.slow
def test_real_vit_b32_random_init_encodes_512d():
    teacher = create_teacher("ViT-B-32", pretrained=None)
    assert teacher.dim == 512 and teacher.image_size == 224
    assert teacher.id.startswith("openclip:ViT-B-32:random-init")
    img = teacher.encode_images(_images(2, size=64))  # resized 64 -> 224 in the batched path
    txt = teacher.encode_texts(["a point cloud model of a chair", "a point cloud model of a table"])
    assert img.shape == (2, 512) and txt.shape == (2, 512)
    torch.testing.assert_close(img.norm(dim=1), torch.ones(2))
