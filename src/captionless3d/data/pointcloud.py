"""Point-cloud preprocessing shared by training, evaluation and the API (batched, vectorised over the batch).

All functions take and return ``torch.Tensor`` of shape ``(B, N, 3)`` float32 in object units; no Python loop over B.
"""
from __future__ import annotations

import math

import torch

from captionless3d.errors import DataError


def check_points(points: torch.Tensor, name: str = "points") -> torch.Tensor:
    """Validate a ``(B, N, 3)`` batch: rank, channel count, finiteness. Raises :class:`DataError` naming ``name``."""
    if points.ndim != 3 or points.shape[-1] != 3:
        raise DataError(f"{name}: expected a (B, N, 3) tensor of xyz, got shape {tuple(points.shape)}")
    if points.shape[0] == 0 or points.shape[1] == 0:
        raise DataError(f"{name}: empty batch or empty cloud, shape {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        bad = (~torch.isfinite(points)).flatten(1).any(1).nonzero().flatten().tolist()
        raise DataError(f"{name}: NaN/Inf coordinates in batch rows {bad[:10]}")
    return points


def normalise_unit_sphere(points: torch.Tensor) -> torch.Tensor:
    """Centre each cloud on its centroid and scale it so its farthest point has norm 1 (docs/method.md, Data; ULIP's
    ``pc_norm``).

    A cloud with no extent (all points equal, up to float rounding of the mean) has no scale: it becomes all zeros
    at the origin rather than rounding noise blown up to norm 1.
    """
    centred = points - points.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=1)
    magnitude = points.abs().flatten(1).amax(dim=1)
    degenerate = radius <= 16 * torch.finfo(points.dtype).eps * magnitude.clamp_min(1.0)
    scale = torch.where(degenerate, torch.ones_like(radius), radius)
    return torch.where(degenerate[:, None, None], torch.zeros_like(centred), centred / scale[:, None, None])


def subset_indices(
    available: int, n: int, generator: torch.Generator | None = None, *, batch: int = 1, pad: bool = False
) -> torch.Tensor:
    """Indices ``(batch, n)`` int64 of a uniform random subset of ``n`` out of ``available`` points per cloud.

    Each cloud draws ``available`` uniform keys from ``generator`` and keeps the points of the ``n`` smallest (so the
    subset is in random order). ``available == n`` gives every point in order and draws nothing. A cloud with fewer
    points raises :class:`DataError` (no silent duplication), unless ``pad``: then it keeps every point and adds
    ``n - available`` uniform random repeats.
    """
    if available <= 0:
        raise DataError(f"cannot subsample an empty cloud (0 points) to {n} points")
    if available == n:
        return torch.arange(n).expand(batch, n)
    if available < n:
        if not pad:
            raise DataError(f"need {n} points per cloud but the stored clouds have only {available}")
        extra = torch.randint(0, available, (batch, n - available), generator=generator)
        return torch.cat([torch.arange(available).expand(batch, available), extra], dim=1)
    keys = torch.rand(batch, available, generator=generator)
    return keys.argsort(dim=1)[:, :n]


def random_subset(points: torch.Tensor, n: int, generator: torch.Generator | None = None, *,
                  pad: bool = False) -> torch.Tensor:
    """``(B, P, 3) -> (B, n, 3)``: ``n`` points per cloud uniformly without replacement, an independent draw per cloud
    (:func:`subset_indices`; training draws anew at every access, evaluation from a seeded generator).

    Raises :class:`DataError` when a cloud has fewer than ``n`` points, unless ``pad`` (random repeats fill up).
    """
    batch, available, _ = points.shape
    if available == n:
        return points
    order = subset_indices(available, n, generator, batch=batch, pad=pad)
    return torch.gather(points, 1, order[..., None].expand(-1, -1, points.shape[-1]))


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``R = R_z R_y R_x`` for angles ``(B, 3)`` in radians (x, y, z). Returns ``(B, 3, 3)``."""
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).view(-1, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).view(-1, 3, 3)
    return rz @ ry @ rx


def random_rotate(points: torch.Tensor, max_degrees: float = 45.0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Rotate each cloud by independent uniform angles in ``[-max_degrees, max_degrees]`` about x, y, z (docs/method.md,
    Data)."""
    if max_degrees <= 0:
        return points
    limit = math.radians(max_degrees)
    angles = (torch.rand(points.shape[0], 3, generator=generator) * 2 - 1) * limit
    return points @ rotation_matrices(angles).transpose(1, 2)
