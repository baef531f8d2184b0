"""Point-BERT's transformer encoder as ULIP uses it (``PointTransformer``), in pure PyTorch.

Module tree and tensor shapes are ULIP's ``models/pointbert/point_encoder.py`` (= Point-BERT's ``PointTransformer``
without its fine-tuning head), so ULIP's ``point_encoder.*`` keys and Point-BERT's ``transformer_q.*`` keys load
after a prefix change (:mod:`captionless3d.models.released`):

==================================  ===========================================================  ============
module (state_dict)                 what (defaults = ULIP-1 ``PointTransformer_8192point.yaml``)  parameters
==================================  ===========================================================  ============
(grouping, no weights)              512 FPS centres, each with its 32 nearest points, centred
``encoder.first_conv``              mini-PointNet: Conv1d 3 -> 128, BN, ReLU, Conv1d 128 -> 256       33,792
``encoder.second_conv``             [max-pooled 256 ; per-point 256] -> Conv1d 512 -> 512, BN,       395,008
                                    ReLU, Conv1d 512 -> 256, max over the group
``reduce_dim``                      Linear 256 -> 384 (one token per group)                           98,688
``cls_token``, ``cls_pos``          (1, 1, 384) each                                                     768
``pos_embed``                       Linear 3 -> 128, GELU, Linear 128 -> 384 (of the group centre)       50,048
``blocks.blocks.{0..11}``           pre-norm layers, 6 heads, qkv without bias, MLP 1536;           21,279,744
                                    the position embedding is added before every layer
``norm``                            final LayerNorm                                                      768
total                               output = [cls token ; max over group tokens] = 768            21,858,816
==================================  ===========================================================  ============

ULIP-1 maps the 768-d output to CLIP with ``pc_projection`` (768 x 512, not part of this backbone). ULIP-2's colored
variant (``PointTransformer_Colored``, 18 layers) takes xyz + rgb: ``in_channels=6`` widens the first convolution to
6 inputs (``[p_j - c, rgb_j]``).

Deliberate differences from the original code (same tensors): the kNN is exact with ties to the lower index
(:func:`~captionless3d.models.ops.knn`; the original's ``topk`` is unordered, which the max-pooling ignores); the
grouping and attention run channels-last; ``drop_path_rate`` uses the same linear schedule over depth.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from captionless3d.errors import ConfigError

from .backbone import PointBackbone, conv_bn_relu, pointwise, require_positive_ints
from .factory import register_encoder
from .ops import furthest_point_sample, gather_points, group_points, knn
from .transformer import pre_norm_layer

__all__ = ["PointBERT", "MiniPointNet"]


class MiniPointNet(nn.Module):
    """Point-BERT's group encoder (``dvae.Encoder``): ``(B, G, K, C_in) -> (B, G, encoder_channel)``.

    ``first_conv`` = Conv1d(C_in, 128), BN, ReLU, Conv1d(128, 256); max over the K points; ``second_conv`` on
    ``[max (256) ; per point (256)]`` = Conv1d(512, 512), BN, ReLU, Conv1d(512, encoder_channel); max again.
    """

    def __init__(self, encoder_channel: int = 256, input_dim: int = 3) -> None:
        super().__init__()
        self.encoder_channel = encoder_channel
        self.first_conv = nn.Sequential(nn.Conv1d(input_dim, 128, 1), nn.BatchNorm1d(128), nn.ReLU(inplace=True),
                                        nn.Conv1d(128, 256, 1))
        self.second_conv = nn.Sequential(nn.Conv1d(512, 512, 1), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
                                         nn.Conv1d(512, encoder_channel, 1))

    def forward(self, groups: Tensor) -> Tensor:
        h = pointwise(self.first_conv[3], conv_bn_relu(self.first_conv[0], self.first_conv[1], groups))
        pooled = h.max(dim=2, keepdim=True).values
        h = torch.cat([pooled.expand_as(h), h], dim=-1)  # the pooled feature first, as the original
        h = pointwise(self.second_conv[3], conv_bn_relu(self.second_conv[0], self.second_conv[1], h))
        return h.max(dim=2).values


class _Block(nn.Module):
    """Weights of one Point-BERT layer under the original names (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
    ``mlp.fc1``, ``mlp.fc2``); computed by :func:`~captionless3d.models.transformer.pre_norm_layer`."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, drop_path_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, mlp_dim)
        self.mlp.fc2 = nn.Linear(mlp_dim, dim)
        self.heads = heads
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        return pre_norm_layer(x, self.norm1, self.attn.qkv, self.attn.proj, self.heads, self.norm2, self.mlp.fc1,
                              self.mlp.fc2, drop_path_rate=self.drop_path_rate, training=self.training)


class PointBERT(PointBackbone):
    """Point-BERT / ULIP ``PointTransformer`` (module doc): ``(B, N, 3) -> (B, 2 * trans_dim)``.

    Args:
        in_channels: 3 (xyz) or more (``features[:, 3:]`` joins the centred coordinates; ULIP-2 colored: 6).
        num_group, group_size: FPS centres and the kNN group size (ULIP: 512 x 32).
        encoder_dims: width of the group encoder's output (256).
        trans_dim, depth, num_heads, mlp_ratio: the transformer (384, 12, 6, 4).
        drop_path_rate: stochastic depth, linear over the layers from 0 to this value (ULIP: 0.1).
        constant_rgb: see :class:`~captionless3d.models.backbone.PointBackbone` (``in_channels=6`` only).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_group: int = 512,
        group_size: int = 32,
        encoder_dims: int = 256,
        trans_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        constant_rgb: float | None = None,
    ) -> None:
        super().__init__()
        self._init_inputs(in_channels, constant_rgb)
        require_positive_ints("pointbert", num_group=num_group, group_size=group_size, encoder_dims=encoder_dims,
                              trans_dim=trans_dim, depth=depth, num_heads=num_heads)
        if trans_dim % num_heads:
            raise ConfigError(f"pointbert: trans_dim={trans_dim} is not divisible by num_heads={num_heads}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ConfigError(f"pointbert: drop_path_rate must be in [0, 1), got {drop_path_rate}")
        self.num_group = num_group
        self.group_size = group_size
        self.trans_dim = trans_dim
        self.encoder = MiniPointNet(encoder_dims, input_dim=in_channels)
        self.reduce_dim = nn.Linear(encoder_dims, trans_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, trans_dim))
        self.cls_pos = nn.Parameter(torch.randn(1, 1, trans_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, trans_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Module()  # ULIP's TransformerEncoder: its layers live under "blocks.blocks.{i}"
        self.blocks.blocks = nn.ModuleList(
            _Block(trans_dim, num_heads, int(trans_dim * mlp_ratio), rates[i]) for i in range(depth)
        )
        self.norm = nn.LayerNorm(trans_dim)
        self.out_channels = 2 * trans_dim
        self.min_points = max(num_group, group_size)

    def group(self, xyz: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """``(neighbourhoods (B, G, K, in_channels), centres (B, G, 3))``: FPS centres (first = point 0), each
        with its ``K`` nearest points as ``[p_j - c, extra_j]``."""
        centres = gather_points(xyz, furthest_point_sample(xyz, self.num_group))
        idx = knn(xyz, centres, self.group_size)
        groups = group_points(xyz, idx) - centres.unsqueeze(2)
        if self.in_channels > 3:
            groups = torch.cat([groups, group_points(features[..., 3:].contiguous(), idx)], dim=-1)
        return groups, centres

    def forward(self, xyz: Tensor, features: Tensor | None = None) -> Tensor:
        p, f = self.inputs(xyz, features)
        groups, centres = self.group(p, f)
        tokens = self.reduce_dim(self.encoder(groups))
        B = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(B, -1, -1), self.pos_embed(centres)], dim=1)
        for block in self.blocks.blocks:
            x = block(x + pos)
        x = self.norm(x)
        return torch.cat([x[:, 0], x[:, 1:].max(dim=1).values], dim=-1)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, groups={self.num_group}x{self.group_size}, "
                f"depth={len(self.blocks.blocks)}, out_channels={self.out_channels}")


# ------------------------------------------------------------------------------------------------------ presets
@register_encoder(builder=PointBERT)
def pointbert() -> dict[str, Any]:
    """ULIP-1's Point-BERT (``PointTransformer_8192point.yaml``): 512 groups of 32, 12 layers (21,858,816)."""
    return {}


@register_encoder(builder=PointBERT)
def pointbert_ulip2() -> dict[str, Any]:
    """ULIP-2's colored Point-BERT (``ULIP_2_PointBERT_10k_colored_pointclouds.yaml``): xyz + rgb, 18 layers."""
    return dict(in_channels=6, depth=18)


@register_encoder(builder=PointBERT)
def pointbert_small() -> dict[str, Any]:
    """For the CPU world (128-256 points): 32 groups of 16 points and 4 layers (7,672,320 parameters); every
    remaining tensor has the shape it has in ``pointbert``. The group encoder's 512-wide convolutions on every
    grouped point dominate the cost on CPU, hence fewer and smaller groups."""
    return dict(num_group=32, group_size=16, depth=4)
