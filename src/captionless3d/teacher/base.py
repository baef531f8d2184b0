"""The ``Teacher`` contract: a frozen image/text encoder that maps into one joint, L2-normalised space.

Every teacher (a real OpenCLIP model, the project's own small synthetic CLIP, a test double) exposes the same small
surface, so the feature store, the miners and the evaluation never care which one they hold:

- ``id``: a stable string that identifies the *weights* (it goes into every downstream manifest), e.g.
  ``"openclip:ViT-B-32:laion2b_s34b_b79k"`` or ``"openclip:synthetic-clip-tiny:sha256:0123456789ab"``;
- ``dim``: the joint embedding size; ``image_size``: the square input resolution of the image tower;
- ``preprocess_id``: a string that describes the image preprocessing (resize, crop, mean, std), also recorded in
  manifests because the same weights with another preprocessing give other embeddings;
- ``encode_images(images, batch_size=..., progress=...)``: a uint8 array ``(B, H, W, 3)`` or a list of PIL images
  -> ``torch.FloatTensor (B, dim)`` on the CPU, L2-normalised, computed in eval mode without gradients;
- ``encode_texts(texts, batch_size=..., progress=...)``: ``list[str]`` -> ``torch.FloatTensor (B, dim)``, likewise.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch

#: Inputs longer than this many items show a tqdm progress bar when ``progress=None`` (auto).
PROGRESS_MIN_ITEMS = 2048


@runtime_checkable
class Teacher(Protocol):
    id: str
    dim: int
    image_size: int
    preprocess_id: str

    def encode_images(
        self, images: np.ndarray | Sequence, *, batch_size: int = 256, progress: bool | None = None
    ) -> torch.Tensor: ...

    def encode_texts(
        self, texts: Sequence[str], *, batch_size: int = 256, progress: bool | None = None
    ) -> torch.Tensor: ...


def batch_slices(n: int, batch_size: int, *, progress: bool | None, desc: str) -> Iterator[slice]:
    """Yield ``slice``s of ``batch_size`` covering ``range(n)``, with an optional tqdm bar (auto: long inputs)."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    starts = range(0, n, batch_size)
    show = (n >= PROGRESS_MIN_ITEMS) if progress is None else bool(progress)
    if show:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=len(starts), desc=desc, unit="batch", leave=False)
    for start in starts:
        yield slice(start, min(start + batch_size, n))


def l2_normalise(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation in float32 (embeddings of half-precision models are upcast first)."""
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
