"""Toy shape collections for the evaluation tests: geometrically distinct classes, photos/masks, tiny encoders."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from captionless3d.models import build_point_encoder

CATEGORIES = ("ball", "plate", "rod", "ring")


def toy_shape(label: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(n, 3)`` float32 cloud of class ``label`` (sphere, flat square, thin rod, ring)."""
    if label == 0:
        p = rng.normal(size=(n, 3))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
    elif label == 1:
        p = np.stack([rng.uniform(-1, 1, n), rng.normal(0, 0.02, n), rng.uniform(-1, 1, n)], axis=1)
    elif label == 2:
        p = np.stack([rng.normal(0, 0.05, n), rng.uniform(-1, 1, n), rng.normal(0, 0.05, n)], axis=1)
    else:
        t = rng.uniform(0, 2 * np.pi, n)
        p = np.stack([np.cos(t), rng.normal(0, 0.03, n), np.sin(t)], axis=1)
    return (p * rng.uniform(0.7, 1.3)).astype(np.float32)


class ToyCollection:
    """Minimal ShapeCollection: ``points (N, P, 3)``, ``labels``, ``splits``, ``photos (N, K, H, W, 3)``, ``masks``."""

    def __init__(self, counts: dict[str, int], *, n_points: int = 96, photos_per_object: int = 1, image_size: int = 16,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        splits, labels = [], []
        for split, count in counts.items():
            splits += [split] * count
            labels += [i % len(CATEGORIES) for i in range(count)]
        self.name = "toy"
        self.categories = list(CATEGORIES)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.splits = np.asarray(splits, dtype=object)
        self.object_ids = [f"{s}/{i:03d}" for i, s in enumerate(splits)]
        self.points = np.stack([toy_shape(int(y), n_points, rng) for y in self.labels])
        n, k, s = len(labels), photos_per_object, image_size
        palette = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]], dtype=np.uint8)
        self.photos = np.broadcast_to(palette[self.labels][:, None, None, None], (n, k, s, s, 3)).copy()
        self.masks = np.zeros((n, k, s, s), dtype=bool)
        self.masks[:, :, s // 4 : 3 * s // 4, s // 4 : 3 * s // 4] = True

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == split).astype(np.int64)


def toy_features(collection: ToyCollection, dim: int = 16, seed: int = 0) -> SimpleNamespace:
    """Teacher-like features: ``prompt_emb (C, D)``, ``photo_emb`` / ``photo_masked_emb (N, K, D)``."""
    g = torch.Generator().manual_seed(seed)
    n, k = collection.photos.shape[:2]
    prompts = torch.randn(len(collection.categories), dim, generator=g)
    photo = (prompts[torch.from_numpy(collection.labels)][:, None].expand(n, k, dim)
             + 0.5 * torch.randn(n, k, dim, generator=g))
    return SimpleNamespace(prompt_emb=prompts.numpy(), photo_emb=photo.numpy(),
                           photo_masked_emb=(photo + 0.1 * torch.randn(n, k, dim, generator=g)).numpy())


def tiny_encoder(embed_dim: int = 16, seed: int = 0) -> torch.nn.Module:
    """PointNeXt-S at width 8 with a ``[32]`` head: the real architecture, small enough for CPU tests."""
    torch.manual_seed(seed)
    return build_point_encoder("pointnext_s", width=8, head_mlps=(32,), embed_dim=embed_dim, head_dropout=0.0)


@torch.no_grad()
def calibrate_batchnorm(encoder: torch.nn.Module, points: np.ndarray, n_points: int, seed: int = 0) -> torch.nn.Module:
    """Give a randomly initialised encoder the BatchNorm statistics a trained one has (cumulative averages over
    ``points``), so eval-mode features are not collapsed. Weights are unchanged."""
    from captionless3d.data.pointcloud import normalise_unit_sphere, random_subset

    bns = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    encoder.train()
    g = torch.Generator().manual_seed(seed)
    encoder(normalise_unit_sphere(random_subset(torch.from_numpy(points), n_points, g)))
    for bn in bns:
        bn.momentum = 0.1
    return encoder.eval()
