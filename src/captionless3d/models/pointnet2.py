"""PointNet++ (SSG) point encoder as ULIP-1 uses it, in pure PyTorch on :mod:`captionless3d.models.ops`.

ULIP's ``Pointnet2_Ssg`` (``models/pointnet2/pointnet2.py``, the pure-PyTorch PointNet++ of yanx27) with the
classifier's last layer removed, so the encoder ends in a 256-d feature that ULIP maps to the CLIP space with its
``pc_projection`` (256 x 512, not part of this backbone):

====================  ==========================================================  ======================
module (state_dict)   what                                                        parameters
====================  ==========================================================  ======================
``sa1``               FPS 512 centres, ball r 0.2, 32 neighbours, MLP [64, 64, 128]        13,248
``sa2``               FPS 128 centres, ball r 0.4, 64 neighbours, MLP [128, 128, 256]      67,456
``sa3``               "group all" (absolute xyz + features), MLP [256, 512, 1024]         727,040
``fc1, bn1, drop1``   Linear 1024 -> 512, BatchNorm1d, ReLU, Dropout(0.4)                 525,824
``fc2, bn2, drop2``   Linear 512 -> 256, BatchNorm1d, ReLU, Dropout(0.4)                  131,840
total                                                                                   1,465,408
====================  ==========================================================  ======================

Every MLP layer of a set abstraction (SA) is ``Conv2d(k=1, bias) -> BatchNorm2d -> ReLU`` on the grouped
``[p_j - c, f_j]`` (relative coordinates first), then max over the neighbours (module names ``mlp_convs.{i}``,
``mlp_bns.{i}`` as the original, so ULIP's ``point_encoder.*`` keys load unchanged). The first SA sees only the
relative coordinates when ``in_channels=3`` (ULIP: ``normal_channel=False``); with ``in_channels > 3`` it also sees
the extra feature channels (``features[:, 3:]``, e.g. normals).

Deliberate differences from the original code (same tensor shapes and weights; outputs can differ):

* FPS starts at point 0 (the original draws a random start per call), so the encoder is deterministic;
* the ball keeps points with ``|p - c|^2 < r^2`` (the original: ``<=``; ties at exactly the radius only);
* the first convolution of each SA is evaluated once per *source* point and gathered (``W [dp; f] = W_p p_j +
  W_f f_j - W_p c``), exact up to float rounding.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionless3d.errors import ConfigError

from .backbone import PointBackbone, batch_norm_last, conv_bn_relu
from .factory import register_encoder
from .ops import ball_query, furthest_point_sample, gather_points, group_points

__all__ = ["PointNetSetAbstraction", "PointNet2SSG"]


class PointNetSetAbstraction(nn.Module):
    """One PointNet++ set abstraction (SSG), channels-last.

    ``forward(xyz (B, N, 3), features (B, N, C) | None, npoint=None) -> (new_xyz (B, S, 3), new_features (B, S,
    mlp[-1]))``: ``S = npoint`` (default ``self.npoint``) FPS centres, each pooling the MLP of its ball's
    ``[p_j - c, f_j]``; with ``group_all`` one "centre" at the origin pooling ``[p_j, f_j]`` over all points
    (``S = 1``). ``in_channel`` = 3 + C (the original's convention).
    """

    def __init__(self, npoint: int | None, radius: float | None, nsample: int | None, in_channel: int,
                 mlp: Sequence[int], group_all: bool = False) -> None:
        super().__init__()
        mlp = [int(m) for m in mlp]
        if not mlp or any(m < 1 for m in mlp) or in_channel < 3:
            raise ConfigError(f"set abstraction: in_channel={in_channel} (>= 3) and mlp={mlp} (positive) are invalid")
        if not group_all:
            if not (isinstance(npoint, int) and npoint >= 1 and isinstance(nsample, int) and nsample >= 1
                    and isinstance(radius, (int, float)) and radius > 0):
                raise ConfigError(f"set abstraction: npoint={npoint!r}, nsample={nsample!r} must be positive ints and "
                                  f"radius={radius!r} a positive number")
        self.npoint = npoint
        self.radius = None if radius is None else float(radius)
        self.nsample = nsample
        self.group_all = group_all
        self.in_channel = in_channel
        self.out_channels = mlp[-1]
        self.mlp_convs = nn.ModuleList()
        self.mlp_bns = nn.ModuleList()
        last = in_channel
        for out in mlp:
            self.mlp_convs.append(nn.Conv2d(last, out, 1))
            self.mlp_bns.append(nn.BatchNorm2d(out))
            last = out

    def forward(self, xyz: Tensor, features: Tensor | None, npoint: int | None = None) -> tuple[Tensor, Tensor]:
        B = xyz.shape[0]
        if self.group_all:
            x = xyz if features is None else torch.cat([xyz, features], dim=-1)
            for conv, bn in zip(self.mlp_convs, self.mlp_bns):
                x = conv_bn_relu(conv, bn, x)
            return xyz.new_zeros(B, 1, 3), x.max(dim=1, keepdim=True).values
        S = int(npoint or self.npoint)
        idx = furthest_point_sample(xyz, S)
        new_xyz = gather_points(xyz, idx)
        nbr = ball_query(xyz, new_xyz, self.radius, self.nsample)  # (B, S, K)
        first = self.mlp_convs[0]
        w = first.weight.reshape(first.out_channels, -1)
        u = F.linear(xyz, w[:, :3], first.bias)  # per source point: W_p p_j (+ W_f f_j) + b
        if features is not None:
            u = u + F.linear(features, w[:, 3:])
        h = group_points(u, nbr) - F.linear(new_xyz, w[:, :3]).unsqueeze(2)  # = conv([p_j - c, f_j]), (B, S, K, C)
        h = F.relu(batch_norm_last(self.mlp_bns[0], h))
        for conv, bn in zip(self.mlp_convs[1:], self.mlp_bns[1:]):
            h = conv_bn_relu(conv, bn, h)
        return new_xyz, h.max(dim=2).values

    def extra_repr(self) -> str:
        if self.group_all:
            return f"group_all, in_channel={self.in_channel}, out={self.out_channels}"
        return (f"npoint={self.npoint}, radius={self.radius}, nsample={self.nsample}, in_channel={self.in_channel}, "
                f"out={self.out_channels}")


class PointNet2SSG(PointBackbone):
    """ULIP-1's PointNet++ SSG encoder (module doc): ``(B, N, 3) -> (B, fc[-1])`` (256 by default).

    Args:
        in_channels: per-point input channels (3 = xyz; > 3 adds ``features[:, 3:]`` to the first SA's input).
        npoints, radii, nsamples: centres, ball radius (object units) and neighbours of the two sampled SAs.
        mlps: MLP widths of ``sa1``, ``sa2`` and the "group all" ``sa3``.
        fc: widths of ``fc1`` and ``fc2`` (each Linear -> BN -> ReLU -> Dropout).
        dropout: dropout after ``bn1`` and ``bn2`` (ULIP: 0.4).
        constant_rgb: see :class:`~captionless3d.models.backbone.PointBackbone` (``in_channels=6`` only).
    """

    def __init__(
        self,
        in_channels: int = 3,
        npoints: Sequence[int] = (512, 128),
        radii: Sequence[float] = (0.2, 0.4),
        nsamples: Sequence[int] = (32, 64),
        mlps: Sequence[Sequence[int]] = ((64, 64, 128), (128, 128, 256), (256, 512, 1024)),
        fc: Sequence[int] = (512, 256),
        dropout: float = 0.4,
        constant_rgb: float | None = None,
    ) -> None:
        super().__init__()
        self._init_inputs(in_channels, constant_rgb)
        npoints, radii, nsamples = list(npoints), list(radii), list(nsamples)
        mlps = [list(m) for m in mlps]
        fc = [int(c) for c in fc]
        if not (len(npoints) == len(radii) == len(nsamples) == 2 and len(mlps) == 3 and len(fc) == 2):
            raise ConfigError("pointnet2: npoints, radii and nsamples need 2 entries (sa1, sa2), mlps 3 (sa1, sa2, "
                              f"sa3) and fc 2; got {npoints}, {radii}, {nsamples}, {mlps}, {fc}")
        if npoints[1] > npoints[0]:
            raise ConfigError(f"pointnet2: npoints must not grow from sa1 to sa2, got {npoints}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"pointnet2: dropout must be in [0, 1), got {dropout}")
        self.sa1 = PointNetSetAbstraction(npoints[0], radii[0], nsamples[0], in_channels, mlps[0])
        self.sa2 = PointNetSetAbstraction(npoints[1], radii[1], nsamples[1], mlps[0][-1] + 3, mlps[1])
        self.sa3 = PointNetSetAbstraction(None, None, None, mlps[1][-1] + 3, mlps[2], group_all=True)
        self.fc1 = nn.Linear(mlps[2][-1], fc[0])
        self.bn1 = nn.BatchNorm1d(fc[0])
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(fc[0], fc[1])
        self.bn2 = nn.BatchNorm1d(fc[1])
        self.drop2 = nn.Dropout(dropout)
        self.out_channels = fc[1]
        self.min_points = npoints[0]

    def forward(self, xyz: Tensor, features: Tensor | None = None) -> Tensor:
        p, f = self.inputs(xyz, features)
        extra = f[..., 3:] if self.in_channels > 3 else None
        p1, f1 = self.sa1(p, extra)
        p2, f2 = self.sa2(p1, f1)
        _, f3 = self.sa3(p2, f2)
        x = self.drop1(F.relu(self.bn1(self.fc1(f3[:, 0]))))
        return self.drop2(F.relu(self.bn2(self.fc2(x))))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, min_points={self.min_points}"


# ------------------------------------------------------------------------------------------------------ presets
@register_encoder(builder=PointNet2SSG)
def pointnet2_ssg() -> dict[str, Any]:
    """ULIP-1's ``Pointnet2_Ssg`` (1,465,408 parameters); needs >= 512 points per cloud (ULIP feeds 8192)."""
    return {}


@register_encoder(builder=PointNet2SSG)
def pointnet2_ssg_small() -> dict[str, Any]:
    """Same weights (every tensor shape equal to ``pointnet2_ssg``), fewer centres for the CPU world's 128-256
    point clouds: 128 and 32 centres, 32 neighbours in both balls."""
    return dict(npoints=(128, 32), nsamples=(32, 32))
