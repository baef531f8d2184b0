"""Fixtures for the baseline tests: a tiny random OpenCLIP teacher, a geometry-only stub teacher and a tiny world."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# the same micro architecture as tests/teacher/conftest.py (32x32 ViT, 32-d joint space): builds offline in seconds
MICRO_NAME = "test-clip-micro"
MICRO_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_WORLD = dict(seed=3, categories=["chair", "mug", "airplane"], n_teacher=1, n_train=1, n_val=1, n_test=2,
                  n_points=256, n_views=2, image_size=32, photos_per_object=2, progress=False)


class StubTeacher:
    """Geometry-only teacher: ``encode_images`` returns each image's L2-normalised grey histogram-ish features
    (mean grey per 4x4 block), so tests of the projection need no network. ``(B, S, S, 3) uint8 -> (B, 16)``."""

    id = "stub"
    preprocess_id = "none"

    def __init__(self, image_size: int = 8) -> None:
        self.image_size = image_size
        self.dim = 16
        self.calls: list[tuple[int, ...]] = []

    def encode_images(self, images, *, batch_size: int = 256, progress=None) -> torch.Tensor:
        self.calls.append(tuple(images.shape))
        x = torch.as_tensor(np.asarray(images)).float()[..., 0]  # (B, S, S)
        blocks = torch.nn.functional.adaptive_avg_pool2d(x[:, None], 4).flatten(1) + 1.0
        return blocks / blocks.norm(dim=-1, keepdim=True)

    def encode_texts(self, texts, *, batch_size: int = 256, progress=None) -> torch.Tensor:
        g = torch.Generator().manual_seed(len(texts))
        out = torch.rand(len(texts), self.dim, generator=g)
        return out / out.norm(dim=-1, keepdim=True)


@pytest.fixture()
def stub_teacher() -> StubTeacher:
    return StubTeacher()


@pytest.fixture(scope="session")
def micro_teacher():
    from captionless3d.teacher.openclip import create_teacher

    torch.set_num_threads(1)  # the test machine is small and shared
    return create_teacher(MICRO_NAME, model_config=MICRO_CONFIG, seed=0)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    from captionless3d.data.synthetic import ensure_world

    return ensure_world(tmp_path_factory.mktemp("pointclip_world"), **TINY_WORLD)


@pytest.fixture(scope="module")
def tiny_features(tiny_world, micro_teacher, tmp_path_factory):
    from captionless3d.teacher.features import build_feature_store

    return build_feature_store(tiny_world, micro_teacher, tmp_path_factory.mktemp("pointclip_features") / "store",
                               progress=False, num_threads=1)
