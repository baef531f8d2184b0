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

# importing a backbone module registers its presets (timm style; each imports factory.register_encoder)
from .pointbert import PointBERT
from .pointnet2 import PointNet2SSG
from .pointnext import PointNextEncoder
from .ppat import PointPatchTransformer

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
