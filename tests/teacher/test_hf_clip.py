"""The Hugging Face ``transformers`` CLIP teacher (``transformers`` is in the ``dev`` extra), on a tiny random
CLIPModel saved offline into tmp dirs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captionless3d.errors import CheckpointError, ConfigError
from captionless3d.teacher.base import Teacher
from captionless3d.teacher.hf_clip import HFCLIPTeacher, create_hf_clip_teacher, save_random_clip
from captionless3d.teacher.registry import create

ROOT = Path(__file__).resolve().parents[2]
DIM, SIZE = 24, 32


def save_tiny_clip(directory: Path, seed: int = 0) -> Path:
    """A random CLIPModel (24-d, 32 px, 1 layer per tower, context 16) + byte-level tokenizer + image processor."""
    return save_random_clip(directory, projection_dim=DIM, image_size=SIZE, context_length=16, seed=seed)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("hf") / "tiny-clip")


@pytest.fixture(scope="module")
def teacher(tiny_dir) -> HFCLIPTeacher:
    return create("hf", name_or_path=tiny_dir)


def _images(n=5, shape=(SIZE, SIZE), seed=0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (n, *shape, 3), dtype=np.uint8)


def _smooth(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([(yy * 5) % 256, (xx * 4) % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)


def test_factory_dims_normalisation_and_protocol(teacher, tiny_dir):
    assert isinstance(teacher, HFCLIPTeacher) and isinstance(teacher, Teacher)
    assert teacher.dim == DIM and teacher.image_size == SIZE
    assert teacher.id.startswith("hf:tiny-clip:sha256:") and len(teacher.id.rsplit(":", 1)[1]) == 12
    assert "shortest32:bicubic" in teacher.preprocess_id and "mean=0.481455" in teacher.preprocess_id
    img = teacher.encode_images(_images(5), batch_size=2)
    txt = teacher.encode_texts(["a chair", "a wooden table with four legs", "lamp"], batch_size=2)
    assert img.shape == (5, DIM) and txt.shape == (3, DIM)
    assert img.dtype == txt.dtype == torch.float32 and img.device.type == "cpu" and not img.requires_grad
    torch.testing.assert_close(img.norm(dim=1), torch.ones(5))
    torch.testing.assert_close(txt.norm(dim=1), torch.ones(3))
    assert not torch.allclose(img[0], img[1]) and not torch.allclose(txt[0], txt[2])
    assert teacher.encode_images(np.zeros((0, SIZE, SIZE, 3), np.uint8)).shape == (0, DIM)
    assert teacher.encode_texts([]).shape == (0, DIM)


def test_matches_transformers_reference_pipeline(teacher, tiny_dir):
    """Our batched preprocessing + encoding == CLIPImageProcessor / tokenizer + CLIPModel features, normalised."""
    from transformers import AutoTokenizer, CLIPImageProcessor

    x = np.concatenate([_images(3, (48, 60)), _smooth(48, 60)[None]])  # resize + crop happen
    pixels = CLIPImageProcessor.from_pretrained(tiny_dir)(images=list(x), return_tensors="pt")["pixel_values"]
    texts = ["a chair", "a wooden table with four legs and a drawer"]
    tok = AutoTokenizer.from_pretrained(tiny_dir)(texts, padding="max_length", truncation=True, max_length=16,
                                                      return_tensors="pt")
    with torch.no_grad():
        ref_img = teacher.model.get_image_features(pixel_values=pixels)
        ref_txt = teacher.model.get_text_features(**tok)
    ref_img = getattr(ref_img, "pooler_output", ref_img)
    ref_txt = getattr(ref_txt, "pooler_output", ref_txt)
    torch.testing.assert_close(teacher.encode_images(x), torch.nn.functional.normalize(ref_img, dim=-1), atol=1e-5,
                               rtol=0)
    torch.testing.assert_close(teacher.encode_texts(texts), torch.nn.functional.normalize(ref_txt, dim=-1), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (48, 60), (71, 40), (100, 100), (20, 30), (45, 50)])
def test_preprocess_vs_hf_image_processors(teacher, tiny_dir, shape):
    """Torchvision backend (the transformers >= 5 default): equal to 1e-5. PIL backend: <= 1 grey level (module doc)."""
    from transformers import CLIPImageProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    std255 = torch.tensor(teacher.std).view(1, 3, 1, 1) * 255
    for im in (_images(1, shape, seed=3)[0], _smooth(*shape)):
        ours = teacher.preprocess_uint8(im[None])
        assert ours.shape == (1, 3, SIZE, SIZE)
        tv = CLIPImageProcessor.from_pretrained(tiny_dir)(images=[im], return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(ours, tv, atol=1e-5, rtol=0)
        pil = CLIPImageProcessorPil.from_pretrained(tiny_dir)(images=[Image.fromarray(im)], return_tensors="pt")
        grey_levels = (ours - pil["pixel_values"]).abs() * std255
        assert grey_levels.max() <= 1.0 + 1e-3
        if shape == (SIZE, SIZE):  # no resize: identical
            assert grey_levels.max() < 1e-3


def test_determinism_batching_and_pil_inputs(teacher, tiny_dir):
    x = _images(7)
    a = teacher.encode_images(x, batch_size=3)
    torch.testing.assert_close(a, teacher.encode_images(x, batch_size=7), atol=1e-5, rtol=0)
    torch.testing.assert_close(a, teacher.encode_images(x, batch_size=3), atol=0, rtol=0)
    # PIL inputs (incl. a non-RGB mode and mixed sizes in one batch) go the same batched way
    pil = [Image.fromarray(im) for im in x]
    torch.testing.assert_close(teacher.encode_images(pil, batch_size=4), a, atol=1e-5, rtol=0)
    big = _smooth(48, 60)
    mixed = [pil[0], Image.fromarray(big), pil[1].convert("RGBA")]
    ref = torch.cat([a[:1], teacher.encode_images(big[None]), a[1:2]])
    torch.testing.assert_close(teacher.encode_images(mixed, batch_size=2), ref, atol=1e-5, rtol=0)
    # texts of different lengths (padding differs between batchings; truncation beyond the 16-token context)
    texts = ["a", "a very long description of a chair that goes past the tiny context length", "table", "a red lamp"]
    t1 = teacher.encode_texts(texts, batch_size=1)
    torch.testing.assert_close(teacher.encode_texts(texts, batch_size=4), t1, atol=1e-5, rtol=0)
    torch.testing.assert_close(teacher.encode_texts(texts[2:3]), t1[2:3], atol=1e-5, rtol=0)
    again = create_hf_clip_teacher(tiny_dir)
    assert again.id == teacher.id and again.preprocess_id == teacher.preprocess_id
    torch.testing.assert_close(again.encode_images(x), a, atol=1e-6, rtol=0)


def test_id_follows_the_weights(teacher, tiny_dir, tmp_path):
    copy = shutil.copytree(tiny_dir, tmp_path / "copy")
    same = create_hf_clip_teacher(copy)
    assert same.id.rsplit(":", 1)[1] == teacher.id.rsplit(":", 1)[1]  # same weights -> same hash
    other = save_tiny_clip(tmp_path / "tiny-clip", seed=1)  # same directory name, other weights
    changed = create_hf_clip_teacher(other)
    assert changed.id != teacher.id and changed.id.startswith("hf:tiny-clip:sha256:")
    assert not torch.allclose(changed.encode_images(_images(2)), teacher.encode_images(_images(2)))


def test_missing_and_corrupt_directories(tiny_dir, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="nope.*does not exist"):
        create("hf", name_or_path=missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty.*no config.json"):
        create_hf_clip_teacher(empty)

    no_weights = shutil.copytree(tiny_dir, tmp_path / "no_weights")
    (no_weights / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no_weights.*no weight file"):
        create_hf_clip_teacher(no_weights)

    corrupt = shutil.copytree(tiny_dir, tmp_path / "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="corrupt.*weights"):
        create_hf_clip_teacher(corrupt)

    bad_cfg = shutil.copytree(tiny_dir, tmp_path / "bad_cfg")
    (bad_cfg / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="bad_cfg.*config"):
        create_hf_clip_teacher(bad_cfg)

    no_tok = shutil.copytree(tiny_dir, tmp_path / "no_tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / name).unlink()
    with pytest.raises(CheckpointError, match="no_tok.*tokenizer"):
        create_hf_clip_teacher(no_tok)

    truncated = shutil.copytree(tiny_dir, tmp_path / "truncated")  # valid file, half the tensors missing
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_dir / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if not k.startswith("text_model.")}, truncated / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="truncated.*do not fit"):
        create_hf_clip_teacher(truncated)


def test_hub_name_from_offline_cache(tiny_dir, tmp_path, monkeypatch):
    """A hub name resolves through the HF cache layout (refs/main -> snapshot); the id carries the commit."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--captionless3d-test--tiny-clip"
    shutil.copytree(tiny_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    t = create_hf_clip_teacher("captionless3d-test/tiny-clip", cache_dir=tmp_path / "cache")
    assert t.id == f"hf:captionless3d-test/tiny-clip@{commit}"
    assert t.encode_texts(["a chair"]).shape == (1, DIM)
    with pytest.raises(CheckpointError, match="(?s)captionless3d-test/not-cached.*(offline|HF_HUB_OFFLINE)"):
        create_hf_clip_teacher("captionless3d-test/not-cached", cache_dir=tmp_path / "cache")


def test_configs_and_registry(tiny_dir, tiny_teacher, tiny_config):
    from omegaconf import OmegaConf

    from captionless3d.pipeline import build_teacher

    cfg = OmegaConf.load(ROOT / "configs" / "teacher" / "hf_clip_local.yaml")
    cfg.factory.name_or_path = str(tiny_dir)
    t = build_teacher(cfg, None)
    assert isinstance(t, HFCLIPTeacher) and t.dim == DIM
    hub = OmegaConf.load(ROOT / "configs" / "teacher" / "hf_clip.yaml")
    assert hub.factory.backend == "hf" and hub.factory.name_or_path == "openai/clip-vit-base-patch32"
    assert hub.factory._target_ == cfg.factory._target_ == "captionless3d.teacher.registry.create"
    from captionless3d.teacher.openclip import OpenCLIPTeacher

    oc = create("openclip", "test-clip-micro", model_config=tiny_config, seed=0)  # conftest's tiny OpenCLIP
    assert isinstance(oc, OpenCLIPTeacher) and oc.id == tiny_teacher.id
    with pytest.raises(ConfigError, match="unknown teacher backend 'nope'.*openclip, hf"):
        create("nope")
    with pytest.raises(ConfigError, match="revision"):
        create_hf_clip_teacher(tiny_dir, revision="main")
