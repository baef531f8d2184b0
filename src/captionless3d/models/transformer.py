"""The pre-norm transformer layer of Point-BERT and OpenShape's PointPatchTransformer, computed once.

Both originals use the same layer (timm-style ViT block): ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` with a
bias-free ``qkv`` projection whose output is ``[q | k | v]``, each laid out as ``(heads, head_dim)``, softmax
attention scaled by ``head_dim ** -0.5``, an output projection with bias, and a ``Linear -> GELU (erf) -> Linear``
MLP. They differ only in module names (Point-BERT: ``norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2``;
OpenShape: ``0.norm, 0.fn.to_qkv, 0.fn.to_out.0, 1.norm, 1.fn.net.0, 1.fn.net.3``). Each backbone keeps its
original module tree (so released ``state_dict`` keys load after a prefix change only) and calls
:func:`pre_norm_layer` with its modules.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import drop_path

__all__ = ["multi_head_attention", "pre_norm_layer"]


def multi_head_attention(x: Tensor, qkv: nn.Linear, proj: nn.Linear, heads: int) -> Tensor:
    """Self-attention of tokens ``x (B, T, D) -> (B, T, D)``: ``qkv`` maps ``D -> 3 * inner`` (``inner = heads *
    head_dim``), ``proj`` maps ``inner -> D``. Scale ``head_dim ** -0.5`` (both originals)."""
    B, T, _ = x.shape
    q, k, v = qkv(x).view(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4)  # 3 x (B, heads, T, head_dim)
    out = F.scaled_dot_product_attention(q, k, v)
    return proj(out.transpose(1, 2).reshape(B, T, -1))


def pre_norm_layer(
    x: Tensor,
    norm1: nn.LayerNorm,
    qkv: nn.Linear,
    proj: nn.Linear,
    heads: int,
    norm2: nn.LayerNorm,
    fc1: nn.Linear,
    fc2: nn.Linear,
    *,
    drop_path_rate: float = 0.0,
    training: bool = False,
) -> Tensor:
    """One transformer layer on ``x (B, T, D)``; ``drop_path_rate``: stochastic depth of both residual branches in
    training (Point-BERT's ``DropPath``; OpenShape uses none)."""
    x = x + drop_path(multi_head_attention(norm1(x), qkv, proj, heads), drop_path_rate, training)
    return x + drop_path(fc2(F.gelu(fc1(norm2(x)))), drop_path_rate, training)
