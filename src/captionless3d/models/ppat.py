"""OpenShape's PointPatchTransformer ("PointBERT" in OpenShape's configs), in pure PyTorch.

Module tree and tensor shapes are OpenShape's ``src/models/ppat.py`` (keys ``sa.*``, ``lift.*``, ``cls_token``,
``transformer.layers.{i}.{0,1}.*``, and ``proj.*`` for the releases that carry their projection), so OpenShape's
``ppat.*`` / ``pc_encoder.*`` keys load after a prefix change (:mod:`captionless3d.models.released`).

Forward, for a cloud of xyz + rgb (``in_channels=6``; rgb in [0, 1], OpenShape feeds 0.4 where a cloud has no
colour):

1. one PointNet++ set abstraction (:class:`~captionless3d.models.pointnet2.PointNetSetAbstraction`): ``patches``
   FPS centres, ball of radius ``radius`` with ``nsample`` points, MLP ``[64, 64, sa_dim]`` on ``[p_j - c, xyz_j,
   rgb_j]`` (9 channels), max over the ball;
2. ``lift``: Conv1d ``[c ; patch feature] (sa_dim + 3) -> dim``, then LayerNorm: one token per patch;
3. a learned ``cls_token`` ``(dim,)`` in front, ``depth`` pre-norm layers (``heads`` x 64, MLP ``mlp_dim``, no
   position embedding beyond the centres in step 2, no final norm);
4. output: the cls token ``(B, dim)``, through ``proj`` (Linear ``dim -> proj_dim``) when the release has one.

===========================  ========================================================================  ==========
preset                       OpenShape release                                                        parameters
===========================  ========================================================================  ==========
``openshape_pointbert_b32``  ``openshape-pointbert-vitb32-rgb`` (OpenAI CLIP ViT-B/32 space, 512-d):    25,297,728
                             dim 512, depth 12, 8 heads, MLP 1024, SA 128, 64 patches, r 0.4, 256
                             samples, no projection
``openshape_pointbert_g14``  ``openshape-pointbert-vitg14-rgb`` (OpenCLIP ViT-bigG-14, 1280-d),        32,326,080
                             "scaling 4": MLP 1536, SA 256, 384 patches, r 0.2, 64 samples,
                             + ``proj`` 512 -> 1280
===========================  ========================================================================  ==========

Deliberate differences from the original (same tensors): FPS starts at point 0 (OpenShape's DGL sampler starts at
a random point); the ball keeps ``|p - c|^2 < r^2`` (original ``<=``); ``patch_dropout`` (OpenShape: training-time
removal of patches, 0 in the releases) is supported the same way.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from captionless3d.errors import ConfigError

from .backbone import PointBackbone, pointwise, require_positive_ints
from .factory import register_encoder
from .pointnet2 import PointNetSetAbstraction
from .transformer import pre_norm_layer

__all__ = ["PointPatchTransformer"]


class _Weights(nn.Module):
    """A named holder of sub-modules (the original's ``PreNorm`` / ``Attention`` / ``FeedForward`` wrappers carry
    no computation of their own here; :func:`~captionless3d.models.transformer.pre_norm_layer` does it)."""

    def __init__(self, **modules: nn.Module) -> None:
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class _ChannelsLast(nn.Module):
    """Placeholder for the original's ``Lambda(permute)`` inside ``lift`` (keeps ``lift.2`` = the LayerNorm)."""


def _layer(dim: int, heads: int, dim_head: int, mlp_dim: int) -> nn.ModuleList:
    inner = heads * dim_head
    attn = _Weights(norm=nn.LayerNorm(dim), fn=_Weights(to_qkv=nn.Linear(dim, 3 * inner, bias=False),
                                                        to_out=nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))))
    ff = _Weights(norm=nn.LayerNorm(dim), fn=_Weights(net=nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(),
                                                                        nn.Dropout(0.0), nn.Linear(mlp_dim, dim),
                                                                        nn.Dropout(0.0))))
    return nn.ModuleList([attn, ff])


class PointPatchTransformer(PointBackbone):
    """OpenShape's point encoder (module doc): ``(B, N, 3)`` + ``features (B, in_channels, N)`` -> ``(B, dim)`` or
    ``(B, proj_dim)``.

    Args:
        in_channels: per-point input channels, xyz first (OpenShape: 6 = xyz + rgb).
        dim, depth, heads, mlp_dim, dim_head: the transformer (``inner = heads * dim_head``).
        sa_dim, patches, radius, nsample: the set abstraction that makes the patch tokens.
        proj_dim: width of the release's own ``proj`` Linear after the cls token (``None``: no projection).
        patch_dropout: patches left out in training (OpenShape's ``patch_dropout``).
        constant_rgb: grey value used as rgb when ``features`` is ``None`` (``in_channels=6``); ``None`` makes
            ``features`` mandatory.
    """

    def __init__(
        self,
        in_channels: int = 6,
        dim: int = 512,
        depth: int = 12,
        heads: int = 8,
        mlp_dim: int = 1024,
        sa_dim: int = 128,
        patches: int = 64,
        radius: float = 0.4,
        nsample: int = 256,
        dim_head: int = 64,
        proj_dim: int | None = None,
        patch_dropout: int = 0,
        constant_rgb: float | None = None,
    ) -> None:
        super().__init__()
        self._init_inputs(in_channels, constant_rgb)
        require_positive_ints("ppat", dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, sa_dim=sa_dim,
                              patches=patches, nsample=nsample, dim_head=dim_head)
        if proj_dim is not None and (isinstance(proj_dim, bool) or not isinstance(proj_dim, int) or proj_dim < 1):
            raise ConfigError(f"ppat: proj_dim must be a positive int or null, got {proj_dim!r}")
        if not isinstance(patch_dropout, int) or not 0 <= patch_dropout < patches:
            raise ConfigError(f"ppat: patch_dropout must be an int in [0, patches={patches}), got {patch_dropout!r}")
        self.patches = patches
        self.patch_dropout = patch_dropout
        self.heads = heads
        self.sa = PointNetSetAbstraction(patches, radius, nsample, in_channels + 3, (64, 64, sa_dim))
        self.lift = nn.Sequential(nn.Conv1d(sa_dim + 3, dim, 1), _ChannelsLast(), nn.LayerNorm([dim]))
        self.cls_token = nn.Parameter(torch.randn(dim))
        self.transformer = _Weights(layers=nn.ModuleList(_layer(dim, heads, dim_head, mlp_dim) for _ in range(depth)))
        if proj_dim is not None:
            self.proj = nn.Linear(dim, proj_dim)
        self.out_channels = proj_dim or dim
        self.min_points = patches

    def forward(self, xyz: Tensor, features: Tensor | None = None) -> Tensor:
        p, f = self.inputs(xyz, features)
        npoint = self.patches - (self.patch_dropout if self.training else 0)
        centres, patch = self.sa(p, f, npoint=npoint)
        x = self.lift[2](pointwise(self.lift[0], torch.cat([centres, patch], dim=-1)))  # (B, S, dim)
        x = torch.cat([self.cls_token.expand(x.shape[0], 1, -1), x], dim=1)
        for attn, ff in self.transformer.layers:
            x = pre_norm_layer(x, attn.norm, attn.fn.to_qkv, attn.fn.to_out[0], self.heads, ff.norm, ff.fn.net[0],
                               ff.fn.net[3])
        out = x[:, 0]
        return self.proj(out) if hasattr(self, "proj") else out

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, patches={self.patches}, depth={len(self.transformer.layers)}, "
                f"constant_rgb={self.constant_rgb}, out_channels={self.out_channels}")


# ------------------------------------------------------------------------------------------------------ presets
_B32 = dict(in_channels=6, dim=512, depth=12, heads=8, mlp_dim=1024, sa_dim=128, patches=64, radius=0.4, nsample=256)


@register_encoder(builder=PointPatchTransformer)
def openshape_pointbert_b32() -> dict[str, Any]:
    """OpenShape ``openshape-pointbert-vitb32-rgb`` (25,297,728 parameters, 512-d output, no projection)."""
    return dict(_B32)


@register_encoder(builder=PointPatchTransformer)
def openshape_pointbert_g14() -> dict[str, Any]:
    """OpenShape ``openshape-pointbert-vitg14-rgb`` ("scaling 4" + proj 512 -> 1280; 32,326,080 parameters)."""
    return dict(_B32, mlp_dim=1536, sa_dim=256, patches=384, radius=0.2, nsample=64, proj_dim=1280)


@register_encoder(builder=PointPatchTransformer)
def openshape_pointbert_b32_small() -> dict[str, Any]:
    """For the CPU world (128-256 points): 32 patches of 32 points and 4 layers; every remaining tensor has the
    shape it has in ``openshape_pointbert_b32``."""
    return dict(_B32, patches=32, nsample=32, depth=4)
