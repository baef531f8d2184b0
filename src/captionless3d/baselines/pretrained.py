"""Released point encoders (ULIP / OpenPoints PointNeXt checkpoints, or our own) evaluated as baselines.

``python -m captionless3d.eval ckpt=... baseline=[ulip_pointnext] baseline.ulip_pointnext.pretrained=<file>`` puts a
released checkpoint in the same table as our models. The file's key layout is detected and loaded strictly
(:func:`captionless3d.models.weights.load_pretrained`): the encoder, the hidden head layers and ULIP's
``pc_projection`` must all be there, and the projection must map to the teacher's dimension.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from captionless3d.errors import ConfigError
from captionless3d.models import build_point_encoder


def create_pretrained_encoder(
    teacher: Any,
    *,
    pretrained: str | os.PathLike | None,
    name: str = "pointnext_s",
    in_channels: int = 3,
    head_mlps: Sequence[int] = (512, 256),
) -> Any:
    """A :class:`~captionless3d.models.factory.PointEncoder` into ``teacher``'s space, weights from ``pretrained``.

    Returns the encoder in eval mode: ``(B, P, 3)`` points -> ``(B, teacher.dim)`` embeddings. ``in_channels=4``
    adds the height channel, as ULIP's released PointNeXt.
    """
    if not pretrained:
        raise ConfigError("baseline: 'pretrained' must name the released checkpoint file (e.g. ULIP's PointNeXt .pt)")
    model = build_point_encoder(
        name, embed_dim=int(teacher.dim), head_mlps=tuple(head_mlps), in_channels=int(in_channels), head_dropout=0.0,
        pretrained=os.fspath(pretrained), pretrained_head="all",
    )
    return model.eval()
