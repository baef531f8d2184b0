"""Point-cloud student encoders: backbones (PointNeXt, PointNet++, Point-BERT, OpenShape's PointPatchTransformer;
pure PyTorch) in one registry, + projection head.

``build_backbone(name)`` returns any registered bare backbone, ``build_point_encoder(name, ...)`` backbone + head;
``list_encoders()`` lists the names (docs/backbones.md). ``export_mode()``: the traceable path of the point ops, under
which ``torch.jit.trace`` / ``torch.onnx.export`` record any backbone's own ``forward`` (:mod:`captionless3d.export`).
"""
from __future__ import annotations

from .factory import (
    backbone_class,
    build_backbone,
    build_point_encoder,
    create_encoder,
    encoder_config,
    list_encoders,
    register_encoder,
)
from .heads import PointEncoder, ProjectionHead
from .ops import ball_query, export_mode, furthest_point_sample, gather_points, group_points, knn
from .pointnext import PointNextEncoder

# the other backbone families register their presets on import (timm style)
from .pointnet2 import PointNet2SSG  # noqa: E402  (after factory: they import its register_encoder)
from .pointbert import PointBERT  # noqa: E402
from .ppat import PointPatchTransformer  # noqa: E402

__all__ = [
    "PointNextEncoder",
    "PointNet2SSG",
    "PointBERT",
    "PointPatchTransformer",
    "ProjectionHead",
    "PointEncoder",
    "build_backbone",
    "backbone_class",
    "build_point_encoder",
    "create_encoder",
    "encoder_config",
    "list_encoders",
    "register_encoder",
    "furthest_point_sample",
    "ball_query",
    "knn",
    "gather_points",
    "group_points",
    "export_mode",
]
