"""The synthetic 3D world: the project's embedded default dataset (stands in for ShapeNet renders + Pix3D photos).

Procedural, deterministic objects from named categories with sub-types, area-weighted surface points, white-background
orbit renders, cluttered "photos" with masks, captions (teacher only) and per-category landmark phrases.

    from captionless3d.data.synthetic import ensure_world
    world = ensure_world("outputs/cache/synthetic", seed=0)   # build once (cached by parameter hash), then load
"""
from captionless3d.data.synthetic.shapes import ALL_CATEGORIES, CATEGORIES, DEFAULT_CATEGORIES
from captionless3d.data.synthetic.world import (
    FORMAT_VERSION,
    SyntheticWorld,
    build_world,
    ensure_world,
    load_world,
    world_dir,
    world_params,
)

__all__ = [
    "ALL_CATEGORIES",
    "CATEGORIES",
    "DEFAULT_CATEGORIES",
    "FORMAT_VERSION",
    "SyntheticWorld",
    "build_world",
    "ensure_world",
    "load_world",
    "world_dir",
    "world_params",
]
