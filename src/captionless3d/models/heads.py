"""Projection head and the full point encoder (backbone + head).

``ProjectionHead`` is OpenPoints' ``ClsHead`` (``create_linearblock`` = Linear without bias -> BatchNorm1d -> ReLU,
then Dropout, per hidden layer) whose last ``Linear`` maps to the embedding size (with bias, no activation). With
``mlps=(512, 256)`` and ``out_dim=512`` this is the paper's / ULIP's ``[512, 256]`` head followed by the 256 -> 512
projection (docs/method.md: "Student", and item 3 of "Choices where the original is not specific"). Parameter names
match ``ClsHead.head`` (``head.0.0.weight`` ...). With ``mlps=()`` it is a single Linear (ULIP's ``pc_projection``
for PointNet++ / Point-BERT); ``projection=False`` drops the final Linear (OpenShape's B32 release already ends in the
teacher's 512-d space).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from captionless3d.errors import ConfigError, DataError

__all__ = ["ProjectionHead", "PointEncoder"]


class ProjectionHead(nn.Module):
    """``(B, in_dim) -> (B, out_dim)``: ``[Linear-BN-ReLU-Dropout] * len(mlps)`` then ``Linear(mlps[-1], out_dim)``
    (left out with ``projection=False``, where ``mlps[-1]`` or ``in_dim`` must already be ``out_dim``)."""

    def __init__(
        self, in_dim: int, mlps: Sequence[int] = (512, 256), out_dim: int = 512, dropout: float = 0.5,
        projection: bool = True,
    ) -> None:
        super().__init__()
        mlps = [int(m) for m in (mlps or ())]
        if in_dim < 1 or out_dim < 1 or any(m < 1 for m in mlps):
            raise ConfigError(f"head: in_dim={in_dim}, mlps={mlps}, out_dim={out_dim} must all be positive")
        if not projection and ([in_dim, *mlps][-1] != out_dim):
            raise ConfigError(f"head: without the final projection the embedding is {[in_dim, *mlps][-1]}-d "
                              f"(backbone {in_dim}, mlps {mlps}), but {out_dim}-d is required (the teacher's size)")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"head dropout must be in [0, 1), got {dropout}")
        dims = [in_dim, *mlps]
        layers: list[nn.Module] = []
        for i in range(len(dims) - 1):
            layers.append(nn.Sequential(nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1]),
                                        nn.ReLU(inplace=True)))
            if dropout:
                layers.append(nn.Dropout(dropout))
        if projection:
            layers.append(nn.Sequential(nn.Linear(dims[-1], out_dim)))
        self.head = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.projection = bool(projection)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise DataError(f"ProjectionHead expects (B, {self.in_dim}), got {tuple(x.shape)}")
        return self.head(x)


class PointEncoder(nn.Module):
    """Backbone + projection head: ``forward(xyz (B, N, 3), features=None) -> (B, out_dim)`` (not normalised).

    ``encoder`` is any backbone (:mod:`captionless3d.models.backbone`: ``forward(xyz, features) -> (B,
    out_channels)``), e.g. a :class:`~captionless3d.models.pointnext.PointNextEncoder`."""

    def __init__(self, encoder: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        if not isinstance(getattr(encoder, "out_channels", None), int):
            raise ConfigError(f"{type(encoder).__name__} has no integer 'out_channels'; it is not a point backbone")
        if head.in_dim != encoder.out_channels:
            raise ConfigError(f"head in_dim {head.in_dim} != encoder out_channels {encoder.out_channels}")
        self.encoder = encoder
        self.head = head
        self.out_dim = head.out_dim

    def forward(self, xyz: Tensor, features: Tensor | None = None) -> Tensor:
        return self.head(self.encoder(xyz, features))
