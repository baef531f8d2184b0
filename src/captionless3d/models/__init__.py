"""Point-cloud student encoders: PointNeXt (pure PyTorch, OpenPoints-compatible) + projection head."""
from __future__ import annotations

from .factory import build_point_encoder, create_encoder, encoder_config, list_encoders, register_encoder
from .heads import PointEncoder, ProjectionHead
from .ops import ball_query, furthest_point_sample, gather_points, group_points
from .pointnext import PointNextEncoder

__all__ = [
    "PointNextEncoder",
    "ProjectionHead",
    "PointEncoder",
    "build_point_encoder",
    "create_encoder",
    "encoder_config",
    "list_encoders",
    "register_encoder",
    "furthest_point_sample",
    "ball_query",
    "gather_points",
    "group_points",
]
