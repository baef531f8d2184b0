"""Training-free baselines that map point clouds into a frozen teacher's space, evaluated with the same harness
(:func:`captionless3d.evaluation.runner.evaluate_encoder`) as the trained student.

- :mod:`captionless3d.baselines.pointclip`: PointCLIP (Zhang et al., CVPR 2022), zero-shot multi-view depth maps.
- :mod:`captionless3d.baselines.pretrained`: released checkpoints (ULIP PointNeXt / PointNet++ / Point-BERT, OpenShape
  PointBERT, OpenPoints PointNeXt), with the embedding-width check against the teacher in use.
- :mod:`captionless3d.baselines.clip2point`: CLIP2Point's depth encoder on PointCLIP's depth projection.
"""
from captionless3d.baselines.clip2point import create_clip2point
from captionless3d.baselines.pointclip import (
    DEFAULT_VIEW_ANGLES,
    PointCLIPEncoder,
    create_pointclip,
    view_bases,
    with_prompt_template,
)
from captionless3d.baselines.pretrained import RELEASES, create_pretrained_encoder

__all__ = [
    "DEFAULT_VIEW_ANGLES",
    "PointCLIPEncoder",
    "create_pointclip",
    "RELEASES",
    "create_clip2point",
    "create_pretrained_encoder",
    "view_bases",
    "with_prompt_template",
]
