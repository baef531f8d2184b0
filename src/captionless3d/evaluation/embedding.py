"""Point clouds -> embeddings for evaluation: a seeded random subset per cloud, unit-sphere normalisation, no
augmentation, eval mode. Every protocol (zero-shot, retrieval, linear probe, validation scalars) embeds through
:func:`embed_points`; the Python API uses the same two preprocessing functions."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from captionless3d.data.pointcloud import normalise_unit_sphere, random_subset
from captionless3d.errors import DataError

__all__ = ["embed_points"]


@torch.no_grad()
def embed_points(
    encoder: nn.Module,
    points: np.ndarray,
    *,
    n_points: int,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: str | None = None,
) -> torch.Tensor:
    """Embed clouds ``(M, P, 3)`` (object units) with a random subset of ``n_points`` each, drawn from one generator
    seeded with ``seed`` for the whole call. Returns ``(M, D)`` float32 on the CPU (not L2-normalised). The encoder
    runs in eval mode and is put back into its previous mode. :class:`DataError` when an embedding is not finite.
    ``progress``: the description of a progress bar over the clouds (``None``: no bar, as for the per-epoch
    validation scalars, which run inside Lightning's own bar)."""
    from tqdm.auto import tqdm

    was_training = encoder.training
    encoder.eval()
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    bar = tqdm(total=len(points), desc=progress, unit="cloud", leave=False, disable=progress is None)
    try:
        for start in range(0, len(points), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(points[start : start + batch_size], dtype=np.float32))
            chunk = normalise_unit_sphere(random_subset(chunk, n_points, generator))
            outputs.append(encoder(chunk.to(device)).float().cpu())
            bar.update(len(chunk))
    finally:
        bar.close()
        encoder.train(was_training)
    embeddings = torch.cat(outputs)
    if not torch.isfinite(embeddings).all():
        raise DataError("the point encoder produced non-finite embeddings on the evaluation split")
    return embeddings
