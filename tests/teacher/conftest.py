"""Fixtures for the teacher tests: a tiny random OpenCLIP architecture and a fake ShapeCollection."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from dataclasses import dataclass, field  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_NAME = "test-clip-micro"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@dataclass
class FakeCollection:
    """The documented ShapeCollection attributes, filled with random data."""

    n: int = 12
    v: int = 3
    k: int = 2
    size: int = 32
    seed: int = 0
    name: str = "fake"
    categories: list = field(default_factory=lambda: ["chair", "table", "lamp"])

    def __post_init__(self) -> None:
        rs = np.random.RandomState(self.seed)
        self.fingerprint = f"fake-{self.n}-{self.v}-{self.k}-{self.size}-{self.seed}"
        self.labels = np.arange(self.n, dtype=np.int64) % len(self.categories)
        self.subtypes = [f"{c}/{s}" for c in self.categories for s in ("plain", "fancy")]
        self.subtype_ids = (self.labels * 2 + (np.arange(self.n) // len(self.categories)) % 2).astype(np.int64)
        self.splits = np.array((["teacher"] * 2 + ["train", "test"]) * (self.n // 4 + 1))[: self.n]
        self.object_ids = [f"obj{i:04d}" for i in range(self.n)]
        self.points = rs.randn(self.n, 64, 3).astype(np.float32)
        self.views = rs.randint(0, 256, (self.n, self.v, self.size, self.size, 3), dtype=np.uint8)
        self.view_angles = [(360.0 * i / self.v, 20.0) for i in range(self.v)]
        self.photos = rs.randint(0, 256, (self.n, self.k, self.size, self.size, 3), dtype=np.uint8)
        self.masks = rs.rand(self.n, self.k, self.size, self.size) > 0.5
        self.captions = [
            [f"a {('red', 'blue')[i % 2]} {self.subtypes[self.subtype_ids[i]].split('/')[1]} "
             f"{self.categories[self.labels[i]]}",
             f"a {self.categories[self.labels[i]]}"]
            for i in range(self.n)
        ]
        self.landmarks = {c: [f"a {c} for the kitchen", f"a {c} with a rounded edge", f"a tall {c}"]
                          for c in self.categories}

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split).astype(np.int64)


@pytest.fixture(scope="session")
def tiny_config():
    import copy

    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_teacher():
    from captionless3d.teacher.openclip import create_teacher

    return create_teacher(TINY_NAME, model_config=TINY_CONFIG, seed=0)


@pytest.fixture()
def fake_collection():
    return FakeCollection()
