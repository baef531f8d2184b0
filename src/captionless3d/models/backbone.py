"""The contract every point backbone keeps (:func:`checked_inputs`), and the small pieces the backbones share.

A *backbone* maps a batch of clouds to one global feature per cloud:

    forward(xyz (B, N, 3) float, features (B, in_channels, N) | None) -> (B, out_channels)

with three attributes the rest of the package reads: ``in_channels`` (per-point input channels), ``out_channels``
(width of the global feature, what :class:`~captionless3d.models.heads.ProjectionHead` maps to the teacher) and
``min_points`` (the fewest points per cloud the backbone accepts). ``xyz`` is in object units (centred and scaled
into the unit sphere by the data module), y up.

``features`` is the per-point input vector; its first three channels are the coordinates, the rest are extra
channels (rgb for OpenShape / ULIP-2, normals for PointNet++ with ``normal_channel``). ``features=None`` derives it
from ``xyz``: ``in_channels=3`` is ``xyz`` itself; ``in_channels=6`` is ``xyz`` + a constant grey ``constant_rgb``
*only if the backbone was built with one* (OpenShape feeds rgb = 0.4 to clouds without colour; this is a config
value, never a silent default). :class:`~captionless3d.models.pointnext.PointNextEncoder` checks its input with the
same :func:`checked_inputs` and derives its own ``features=None`` (``in_channels=4`` = xyz + height).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captionless3d.errors import ConfigError, DataError

__all__ = [
    "PointBackbone",
    "checked_inputs",
    "require_positive_ints",
    "batch_norm_last",
    "pointwise",
    "conv_bn_relu",
    "drop_path",
]

#: Largest accepted |coordinate|: squared distances of points beyond ~1e19 overflow float32 (the max is ~3.4e38).
MAX_ABS_COORDINATE = 1e18


def batch_norm_last(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Apply ``bn`` (BatchNorm1d/2d over channels) to channels-last ``x (..., C)``, with the module's exact semantics
    (batch statistics + running-stat update in training, running statistics in eval). A ``SyncBatchNorm`` (what
    ``trainer.sync_batchnorm`` converts to) is called as a module, so its statistics are reduced across ranks."""
    if isinstance(bn, nn.SyncBatchNorm):
        return bn(x.reshape(-1, x.shape[-1])).view(x.shape)
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        eaf = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    else:
        eaf = 0.0 if bn.momentum is None else bn.momentum
    use_batch = bn.training or bn.running_mean is None
    shape = x.shape
    y = F.batch_norm(
        x.reshape(-1, shape[-1]),
        bn.running_mean if not bn.training or bn.track_running_stats else None,
        bn.running_var if not bn.training or bn.track_running_stats else None,
        bn.weight,
        bn.bias,
        use_batch,
        eaf,
        bn.eps,
    )
    return y.view(shape)


def checked_inputs(xyz: Any, features: Any, *, in_channels: int, min_points: int, dtype: torch.dtype, who: str,
                   why: str = "", default_features: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """The input contract of every backbone (module doc): checked ``xyz (B, N, 3)`` and channels-last
    ``features (B, N, in_channels)``, both in ``dtype``; ``features=None`` becomes ``default_features(xyz)``.

    Raises :class:`DataError` naming the problem: not a tensor, wrong shape, fewer than ``min_points`` points per cloud
    (``who`` names the backbone, ``why`` says why), non-finite or enormous coordinates, features of the wrong shape.
    """
    if not isinstance(xyz, Tensor):
        raise DataError(f"xyz must be a torch.Tensor of shape (B, N, 3), got {type(xyz).__name__}")
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise DataError(f"xyz must have shape (B, N, 3), got {tuple(xyz.shape)}")
    B, N, _ = xyz.shape
    if B == 0:
        raise DataError("xyz: empty batch (B = 0)")
    if N < min_points:
        raise DataError(f"xyz has {N} points per cloud; {who} needs at least {min_points}{why}")
    if not xyz.is_floating_point():
        raise DataError(f"xyz must be a floating-point tensor, got {xyz.dtype}")
    xyz = xyz.to(dtype)
    if not bool(torch.isfinite(xyz).all()):
        raise DataError("xyz contains NaN or Inf coordinates")
    if bool((xyz.abs() > MAX_ABS_COORDINATE).any()):
        # differences and squared distances of such coordinates overflow float32 into a silent NaN embedding
        raise DataError(
            f"xyz has coordinates beyond ±{MAX_ABS_COORDINATE:g} (max |x| = {float(xyz.abs().max()):.3g}): "
            "normalise the clouds first (captionless3d.data.pointcloud.normalise_unit_sphere)"
        )
    if features is None:
        f = default_features(xyz)
    else:
        if not isinstance(features, Tensor):
            raise DataError(f"features must be a torch.Tensor (B, C, N), got {type(features).__name__}")
        if features.dim() != 3 or tuple(features.shape) != (B, in_channels, N):
            raise DataError(f"features must have shape (B, in_channels, N) = ({B}, {in_channels}, {N}), "
                            f"got {tuple(features.shape)}")
        if not features.is_floating_point():
            raise DataError(f"features must be floating point, got {features.dtype}")
        f = features.to(dtype).transpose(1, 2)
        if not bool(torch.isfinite(f).all()):
            raise DataError("features contain NaN or Inf")
    return xyz.contiguous(), f.contiguous()


def require_positive_ints(kind: str, **values: Any) -> None:
    """:class:`ConfigError` ``"<kind>: <key> must be a positive int"`` for the first of ``values`` (in order) that is
    not an ``int >= 1`` (a ``bool`` is not an int here)."""
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{kind}: {key} must be a positive int, got {value!r}")


def pointwise(conv: nn.Module, x: Tensor) -> Tensor:
    """A kernel-1 ``Conv1d``/``Conv2d`` (or ``Linear``) applied to channels-last ``x (..., C_in) -> (..., C_out)``.

    The checkpoints hold convolution weights ``(C_out, C_in, 1[, 1])``; a matrix product on the last axis computes
    the same thing without the channels-first transposes of the original code."""
    weight = conv.weight
    return F.linear(x, weight.reshape(weight.shape[0], -1), conv.bias)


def conv_bn_relu(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """``ReLU(BN(conv(x)))`` on channels-last ``x``, BatchNorm with the module's exact train/eval semantics."""
    return F.relu(batch_norm_last(bn, pointwise(conv, x)))


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (timm's ``DropPath``): in training, zero a residual branch ``x (B, ...)`` per sample with
    probability ``p`` and scale the kept ones by ``1 / (1 - p)``; the identity in eval or when ``p == 0``."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class PointBackbone(nn.Module):
    """Base class of the backbones in this package other than PointNeXt (module doc for the contract).

    Subclasses set ``in_channels``, ``out_channels``, ``min_points`` and ``constant_rgb`` in ``__init__`` and call
    :meth:`inputs` first in ``forward``.
    """

    in_channels: int
    out_channels: int
    min_points: int
    constant_rgb: float | None

    def _init_inputs(self, in_channels: Any, constant_rgb: Any) -> None:
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 3:
            raise ConfigError(f"in_channels must be an int >= 3 (xyz first, then extra channels), got {in_channels!r}")
        if constant_rgb is not None:
            if in_channels != 6:
                raise ConfigError("constant_rgb applies to xyz + rgb input (in_channels=6), not "
                                  f"in_channels={in_channels}")
            if (isinstance(constant_rgb, bool) or not isinstance(constant_rgb, (int, float))
                    or not 0.0 <= constant_rgb <= 1.0):
                raise ConfigError(f"constant_rgb must be a grey value in [0, 1] (OpenShape: 0.4), got {constant_rgb!r}")
            constant_rgb = float(constant_rgb)
        self.in_channels = in_channels
        self.constant_rgb = constant_rgb

    def _param_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def inputs(self, xyz: Any, features: Any) -> tuple[Tensor, Tensor]:
        """Checked ``xyz (B, N, 3)`` and channels-last ``features (B, N, in_channels)`` in the parameters' dtype.

        Raises :class:`DataError` naming the problem: not a tensor, wrong shape, too few points, non-finite or
        enormous coordinates, features of the wrong shape, or ``features=None`` where the backbone needs extra
        channels and has no ``constant_rgb``.
        """
        return checked_inputs(xyz, features, in_channels=self.in_channels, min_points=self.min_points,
                              dtype=self._param_dtype(), who=type(self).__name__, why=" (it samples that many centres)",
                              default_features=self._default_features)

    def _default_features(self, xyz: Tensor) -> Tensor:
        """``features=None``: ``xyz`` itself, or ``xyz`` + the constant grey ``constant_rgb``."""
        if self.in_channels == 3:
            return xyz
        if self.constant_rgb is not None:
            return torch.cat([xyz, xyz.new_full((*xyz.shape[:2], 3), self.constant_rgb)], dim=-1)
        raise DataError(
            f"{type(self).__name__} takes {self.in_channels} input channels (xyz + {self.in_channels - 3} "
            f"more) and was built without constant_rgb: pass features of shape (B, {self.in_channels}, N), "
            "or build it with constant_rgb=0.4 (OpenShape's grey for clouds without colour)"
        )
