"""Training-free baselines that map point clouds into a frozen teacher's space, evaluated with the same harness
(:func:`captionless3d.evaluation.runner.evaluate_encoder`) as the trained student.

- :mod:`captionless3d.baselines.pointclip`: PointCLIP (Zhang et al., CVPR 2022), zero-shot multi-view depth maps.
"""
from captionless3d.baselines.pointclip import (
    DEFAULT_VIEW_ANGLES,
    PointCLIPEncoder,
    create_pointclip,
    view_bases,
    with_prompt_template,
)

__all__ = ["DEFAULT_VIEW_ANGLES", "PointCLIPEncoder", "create_pointclip", "view_bases", "with_prompt_template"]
