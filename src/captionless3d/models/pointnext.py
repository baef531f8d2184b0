"""PointNeXt encoder in pure PyTorch, architecturally identical to OpenPoints' ``PointNextEncoder``.

Same modules, same parameter names and shapes (``encoder.{stage}.{block}.convs.0.0.weight`` ...), so an OpenPoints
``state_dict`` of the encoder loads as is. What differs is only how the layers are computed, on CPU:

* features are kept channels-last ``(B, N, C)``; every 1x1 convolution is a matrix product on the last dimension
  (the ``Conv1d``/``Conv2d`` modules only hold the weights);
* the first convolution after grouping is split: ``W [dp; f_j] = W_f f_j + W_p (p_j - p_i) / r`` is evaluated once
  per *source* point and then gathered, instead of on ``nsample`` copies (exact up to float rounding);
* with ``fused=True`` (default) the grouped part "gather -> BN -> ReLU [-> conv -> BN] -> max over neighbours" runs
  as one chunked autograd function (:mod:`captionless3d.models.grouped`) that never materialises the
  ``(B, npoint, nsample, C)`` tensors at full size; ``fused=False`` uses plain autograd ops (reference path);
* in export mode (:func:`captionless3d.models.ops.export_mode`, and whenever a tracer records) the point ops and the
  grouped layers take their traceable paths, so ``torch.jit.trace`` / ``torch.onnx.export`` record this ``forward``
  itself (:mod:`captionless3d.export`).

Semantics kept from OpenPoints: stride-1 first stage = a plain per-point conv (with bias, no norm/act); a stride-1
later stage = "group all" (absolute xyz concatenated with features); set abstraction (SA) with farthest point
sampling, ball query, ``dp_fj`` features, ``normalize_dp`` (dp / radius), max pooling, optional residual
(``sa_use_res``); ``InvResMLP`` blocks for ``blocks[i] > 1``; width doubles at every downsampling stage; radius is
multiplied by ``radius_scaling`` after each downsampling stage (OpenPoints' ``_to_full_list``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionless3d.errors import ConfigError, DataError

from . import grouped as _grouped
from .backbone import batch_norm_last, checked_inputs
from .ops import ball_query, furthest_point_sample, gather_points, group_points, in_export_mode, random_sample

__all__ = ["PointNextEncoder", "ConvBlock", "SetAbstraction", "InvResMLP", "LocalAggregation", "batch_norm_last"]

class ConvBlock(nn.Sequential):
    """OpenPoints' ``create_convblock{1,2}d`` (order conv-norm-act): ``Conv(k=1) [-> BN] [-> ReLU]``.

    Holds the weights in the OpenPoints modules (so names/shapes match) but computes on channels-last input
    ``(..., in_channels) -> (..., out_channels)``. The conv has a bias only when there is no norm.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dim: int, norm: bool, act: bool) -> None:
        conv_cls = nn.Conv1d if dim == 1 else nn.Conv2d
        bn_cls = nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d
        layers: list[nn.Module] = [conv_cls(in_channels, out_channels, 1, bias=not norm)]
        if norm:
            layers.append(bn_cls(out_channels))
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.has_norm = norm
        self.has_act = act

    @property
    def conv(self) -> nn.Module:
        return self[0]

    @property
    def bn(self) -> nn.modules.batchnorm._BatchNorm | None:
        return self[1] if self.has_norm else None  # type: ignore[return-value]

    @property
    def weight2d(self) -> Tensor:
        return self[0].weight.view(self.out_channels, self.in_channels)

    def post(self, y: Tensor) -> Tensor:
        """Norm and activation of an already convolved ``y (..., out_channels)``."""
        if self.has_norm:
            y = batch_norm_last(self[1], y)
        if self.has_act:
            y = F.relu(y)
        return y

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return self.post(F.linear(x, self.weight2d, self[0].bias))


def _first_conv_split(
    block: ConvBlock, p: Tensor, f: Tensor | None, new_p: Tensor, scale: float
) -> tuple[Tensor, Tensor]:
    """Per-source ``u = W_f f + W_p p * scale`` (B, N, C) and per-centre ``v = W_p new_p * scale`` (B, M, C) such that
    the first grouped conv is ``u[nbr] - v`` (the ``dp_fj`` concatenation is ``[dp (3), f_j (C)]``)."""
    w = block.weight2d
    w_p = w[:, :3]
    u = F.linear(p, w_p * scale)
    if f is not None:
        u = u + F.linear(f, w[:, 3:])
    v = F.linear(new_p, w_p * scale)
    if block[0].bias is not None:
        u = u + block[0].bias
    return u, v


def _pool(x: Tensor, dim: int, reduction: str) -> Tensor:
    if reduction == "max":
        return x.max(dim=dim).values
    if reduction == "mean":
        return x.mean(dim=dim)
    return x.sum(dim=dim)


class SetAbstraction(nn.Module):
    """OpenPoints' ``SetAbstraction`` (modified PointNet++ SA with optional residual). Channels-last."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        layers: int,
        stride: int,
        radius: float,
        nsample: int,
        is_head: bool = False,
        use_res: bool = False,
        normalize_dp: bool = True,
        sampler: str = "fps",
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.stride = stride
        self.is_head = is_head
        self.all_aggr = not is_head and stride == 1
        self.use_res = use_res and not self.all_aggr and not is_head
        self.radius = radius
        self.nsample = nsample
        self.normalize_dp = normalize_dp
        self.sampler = sampler
        self.fused = fused
        mid = out_channels // 2 if stride > 1 else out_channels
        channels = [in_channels] + [mid] * (layers - 1) + [out_channels]
        channels[0] = in_channels if is_head else in_channels + 3
        if self.use_res:
            self.skipconv = (
                ConvBlock(in_channels, out_channels, dim=1, norm=False, act=False)
                if in_channels != out_channels
                else nn.Identity()
            )
            self.act = nn.ReLU(inplace=True)
        n = len(channels) - 1
        self.convs = nn.Sequential(
            *[
                ConvBlock(
                    channels[i],
                    channels[i + 1],
                    dim=1 if is_head else 2,
                    norm=not is_head,
                    act=not (i == n - 1 and (self.use_res or is_head)),
                )
                for i in range(n)
            ]
        )

    def forward(self, p: Tensor, f: Tensor, cache: dict | None = None) -> tuple[Tensor, Tensor]:
        if self.is_head:
            return p, self.convs(f)
        if self.all_aggr:
            x = torch.cat([p, f], dim=-1)  # group all: absolute xyz, no normalisation
            return p, self.convs(x).max(dim=1, keepdim=True).values  # (B, 1, C)
        B, N, _ = p.shape
        npoint = N // self.stride
        if self.sampler == "fps":
            idx = furthest_point_sample(p, npoint)
        else:
            idx = random_sample(p, npoint)
        new_p = gather_points(p, idx)
        nbr = ball_query(p, new_p, self.radius, self.nsample)
        scale = 1.0 / self.radius if self.normalize_dp else 1.0
        u, v = _first_conv_split(self.convs[0], p, f, new_p, scale)
        out = _grouped_mlp_max(u, v, nbr, list(self.convs), "max", self.fused)
        if self.use_res:
            out = F.relu(out + self.skipconv(gather_points(f, idx)))
        return new_p, out


class LocalAggregation(nn.Module):
    """OpenPoints' ``LocalAggregation`` with ``channels [C, C]``: ball query on the same set, ``dp_fj``, one conv
    (BN + ReLU), reduction over neighbours."""

    def __init__(
        self, channels: int, *, radius: float, nsample: int, normalize_dp: bool, reduction: str, fused: bool
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(ConvBlock(channels + 3, channels, dim=2, norm=True, act=True))
        self.radius = radius
        self.nsample = nsample
        self.normalize_dp = normalize_dp
        self.reduction = reduction
        self.fused = fused

    def forward(self, p: Tensor, f: Tensor, cache: dict | None = None) -> Tensor:
        key = ("ballquery", self.radius, self.nsample)
        nbr = cache.get(key) if cache is not None else None
        if nbr is None:
            nbr = ball_query(p, p, self.radius, self.nsample)
            if cache is not None:
                cache[key] = nbr
        scale = 1.0 / self.radius if self.normalize_dp else 1.0
        u, v = _first_conv_split(self.convs[0], p, f, p, scale)
        return _grouped_mlp_max(u, v, nbr, list(self.convs), self.reduction, self.fused)


class InvResMLP(nn.Module):
    """OpenPoints' ``InvResMLP``: local aggregation, then pointwise ``C -> expansion*C -> C``, residual, ReLU."""

    def __init__(
        self,
        channels: int,
        *,
        radius: float,
        nsample: int,
        expansion: int = 4,
        use_res: bool = True,
        normalize_dp: bool = True,
        reduction: str = "max",
        fused: bool = True,
    ) -> None:
        super().__init__()
        self.use_res = use_res
        mid = int(channels * expansion)
        self.convs = LocalAggregation(
            channels, radius=radius, nsample=nsample, normalize_dp=normalize_dp, reduction=reduction, fused=fused
        )
        self.pwconv = nn.Sequential(
            ConvBlock(channels, mid, dim=1, norm=True, act=True),
            ConvBlock(mid, channels, dim=1, norm=True, act=False),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, p: Tensor, f: Tensor, cache: dict | None = None) -> tuple[Tensor, Tensor]:
        identity = f
        f = self.pwconv(self.convs(p, f, cache))
        if self.use_res:
            f = f + identity
        return p, F.relu(f)


def _grouped_mlp_max(
    u: Tensor, v: Tensor, nbr: Tensor, blocks: list[ConvBlock], reduction: str, fused: bool
) -> Tensor:
    """``pool_k( blocks[1:]( post0( u[nbr] - v ) ) )`` -> ``(B, M, C_out)``; ``post0`` = BN/ReLU of ``blocks[0]``.

    The fused path is a CPU optimisation: on a GPU (H200, 32 x 2048 train step) plain autograd was 26x faster. In
    export mode (:func:`~captionless3d.models.ops.export_mode`) the plain path runs: the fused op is a custom
    autograd function on worker threads, which neither TorchScript nor ONNX can record.
    """
    if (fused and u.device.type == "cpu" and reduction == "max" and not in_export_mode()
            and _grouped.supports(blocks)):
        return _grouped.grouped_mlp_max(u, v, nbr, blocks)
    h = blocks[0].post(group_points(u, nbr) - v.unsqueeze(2))
    for blk in blocks[1:]:
        h = blk(h)
    return _pool(h, 2, reduction)


def _to_full_list(param: Any, blocks: Sequence[int], strides: Sequence[int], scaling: float, key: str) -> list[list]:
    """OpenPoints' ``PointNextEncoder._to_full_list``: a scalar grows by ``scaling`` after each downsampling stage
    (the first block of a stage uses the value before scaling, later blocks the scaled one); a list gives one value
    (or one list) per stage."""
    out: list[list] = []
    if isinstance(param, (list, tuple)):
        if len(param) != len(blocks):
            raise ConfigError(f"{key}: expected {len(blocks)} per-stage values, got {len(param)}")
        for i, value in enumerate(param):
            value = list(value) if isinstance(value, (list, tuple)) else [value]
            if not value:
                raise ConfigError(f"{key}[{i}] is empty")
            if len(value) < blocks[i]:
                value += [value[-1]] * (blocks[i] - len(value))
            out.append(value)
        return out
    for i, stride in enumerate(strides):
        if stride == 1:
            out.append([param] * blocks[i])
        else:
            out.append([param] + [param * scaling] * (blocks[i] - 1))
            param = param * scaling
    return out


class PointNextEncoder(nn.Module):
    """PointNeXt encoder; ``forward(xyz (B, N, 3), features (B, C, N) | None) -> (B, out_channels)``.

    Defaults are PointNeXt-S as configured by ULIP / No-Captions (``pointnext-s.yaml``). The global feature is the
    max over the last stage's points (PointNeXt-S ends with a "group all" stage, so this is exactly OpenPoints'
    ``forward_cls_feat``; presets whose last stage still has several points are max-pooled here).

    ``features=None`` uses ``xyz`` as features (``in_channels=3``) or ``xyz`` + height above the lowest point along
    ``height_dim`` (``in_channels=4``, ULIP's ``use_height`` with y up).
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 32,
        blocks: Sequence[int] = (1, 1, 1, 1, 1, 1),
        strides: Sequence[int] = (1, 2, 2, 2, 2, 1),
        nsample: int | Sequence = 32,
        radius: float | Sequence = 0.15,
        radius_scaling: float = 1.5,
        nsample_scaling: int = 1,
        sa_layers: int = 2,
        sa_use_res: bool = True,
        expansion: int = 4,
        use_res: bool = True,
        normalize_dp: bool = True,
        aggr: str = "max",
        sampler: str = "fps",
        height_dim: int = 1,
        fused: bool = True,
    ) -> None:
        super().__init__()
        blocks = [int(b) for b in blocks]
        strides = [int(s) for s in strides]
        self._validate(in_channels, width, blocks, strides, sa_layers, expansion, aggr, sampler, height_dim)
        self.in_channels = in_channels
        self.blocks = blocks
        self.strides = strides
        self.aggr = "mean" if aggr == "avg" else aggr
        self.height_dim = height_dim
        self.radii = _to_full_list(radius, blocks, strides, radius_scaling, "radius")
        self.nsamples = _to_full_list(nsample, blocks, strides, nsample_scaling, "nsample")
        for key, values in (("radius", self.radii), ("nsample", self.nsamples)):
            for stage in values:
                if any(not (isinstance(x, (int, float)) and x > 0) for x in stage):
                    raise ConfigError(f"{key}: every value must be a positive number, got {values}")
        self.nsamples = [[int(round(x)) for x in stage] for stage in self.nsamples]

        channels = []
        w = width
        for s in strides:
            if s != 1:
                w *= 2
            channels.append(w)
        stages = []
        cin = in_channels
        for i, nblocks in enumerate(blocks):
            is_head = i == 0 and strides[i] == 1
            layers: list[nn.Module] = [
                SetAbstraction(
                    cin,
                    channels[i],
                    layers=1 if is_head else sa_layers,
                    stride=strides[i],
                    radius=float(self.radii[i][0]),
                    nsample=self.nsamples[i][0],
                    is_head=is_head,
                    use_res=sa_use_res,
                    normalize_dp=normalize_dp,
                    sampler=sampler,
                    fused=fused,
                )
            ]
            cin = channels[i]
            for j in range(1, nblocks):
                layers.append(
                    InvResMLP(
                        cin,
                        radius=float(self.radii[i][j]),
                        nsample=self.nsamples[i][j],
                        expansion=expansion,
                        use_res=use_res,
                        normalize_dp=normalize_dp,
                        reduction=self.aggr,
                        fused=fused,
                    )
                )
            stages.append(nn.Sequential(*layers))
        self.encoder = nn.Sequential(*stages)
        self.channel_list = channels
        self.out_channels = channels[-1]
        self.min_points = math.prod(s for i, s in enumerate(strides) if not (i == 0 and s == 1))

    @staticmethod
    def _validate(in_channels, width, blocks, strides, sa_layers, expansion, aggr, sampler, height_dim) -> None:
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ConfigError(f"in_channels must be a positive int, got {in_channels!r}")
        if not isinstance(width, int) or width < 1:
            raise ConfigError(f"width must be a positive int, got {width!r}")
        if not blocks or len(blocks) != len(strides):
            raise ConfigError(f"blocks {blocks} and strides {strides} must be non-empty and of equal length")
        if any(b < 1 for b in blocks):
            raise ConfigError(f"blocks: every stage needs >= 1 block, got {blocks}")
        if any(s < 1 for s in strides):
            raise ConfigError(f"strides must be >= 1, got {strides}")
        for i, s in enumerate(strides):
            if s == 1 and 0 < i < len(strides) - 1:
                raise ConfigError(
                    f"strides[{i}] = 1: a stride-1 stage after the first is 'group all' and must be the last stage"
                )
        if len(strides) > 1 and strides[-1] == 1 and blocks[-1] != 1:
            raise ConfigError("blocks[-1] must be 1 when the last stage is 'group all' (stride 1)")
        if sa_layers < 1:
            raise ConfigError(f"sa_layers must be >= 1, got {sa_layers}")
        if expansion < 1:
            raise ConfigError(f"expansion must be >= 1, got {expansion}")
        if aggr not in ("max", "mean", "avg", "sum"):
            raise ConfigError(f"aggr must be one of max, mean, avg, sum; got {aggr!r}")
        if sampler not in ("fps", "random"):
            raise ConfigError(f"sampler must be 'fps' or 'random', got {sampler!r}")
        if height_dim not in (0, 1, 2):
            raise ConfigError(f"height_dim must be 0, 1 or 2, got {height_dim!r}")

    # ------------------------------------------------------------------ inputs
    def _prepare(self, xyz: Any, features: Any) -> tuple[Tensor, Tensor]:
        return checked_inputs(xyz, features, in_channels=self.in_channels, min_points=self.min_points,
                              dtype=self.encoder[0][0].convs[0][0].weight.dtype,
                              who=f"this encoder (strides {self.strides})", default_features=self._default_features)

    def _default_features(self, xyz: Tensor) -> Tensor:
        """``features=None``: ``xyz`` (``in_channels=3``) or ``xyz`` + height above the cloud's lowest point (4)."""
        if self.in_channels == 3:
            return xyz
        if self.in_channels == 4:
            h = xyz[..., self.height_dim : self.height_dim + 1]
            return torch.cat([xyz, h - h.min(dim=1, keepdim=True).values], dim=-1)
        raise DataError(
            f"features=None only works for in_channels 3 (xyz) or 4 (xyz + height); this encoder has "
            f"in_channels={self.in_channels}, pass features of shape (B, {self.in_channels}, N)"
        )

    # ----------------------------------------------------------------- forward
    def forward_stages(self, xyz: Tensor, features: Tensor | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """Per-stage positions ``(B, N_i, 3)`` and channels-last features ``(B, N_i, C_i)`` (input first)."""
        p, f = self._prepare(xyz, features)
        ps, fs = [p], [f]
        for stage in self.encoder:
            cache: dict = {}
            for block in stage:
                p, f = block(p, f, cache)
            ps.append(p)
            fs.append(f)
        return ps, fs

    def forward(self, xyz: Tensor, features: Tensor | None = None) -> Tensor:
        p, f = self._prepare(xyz, features)
        for stage in self.encoder:
            cache: dict = {}
            for block in stage:
                p, f = block(p, f, cache)
        return f.max(dim=1).values

    forward_cls_feat = forward

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, blocks={self.blocks}, strides={self.strides}, "
            f"out_channels={self.out_channels}, radii={self.radii}, nsample={self.nsamples}"
        )
