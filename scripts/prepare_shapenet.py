#!/usr/bin/env python
"""ULIP / ULIP-2 ShapeNet-55 triplets -> validated collection + teacher feature store (the paper's training data).

    python scripts/prepare_shapenet.py --root data/shapenet-55 [--cache .cache] [--skip-bad]
        [--teacher-name ViT-B-32 --pretrained laion2b_s34b_b79k | --checkpoint PATH [--model-config JSON]]

Reader defaults = configs/data/shapenet_ulip2.yaml, so ``python -m captionless3d.train data=shapenet_ulip2
teacher=vitb32_laion2b paths.cache_dir=<cache>`` reuses the store (if you pass --skip-bad here, also pass
``data.collection.skip_bad=true`` there: the skipped objects change the collection). Every render is checked up
front (``--no-check-images`` to skip); missing views and corrupt files are listed at the end with --skip-bad.
"""
from __future__ import annotations

import sys

from captionless3d.data.readers import read_ulip_shapenet
from captionless3d.prepare_data import make_parser, run


def _int_list(value: str) -> list[int] | None:
    return None if value.lower() in ("none", "null", "all") else [int(v) for v in value.split(",") if v]


def build_parser():
    parser = make_parser(__doc__.splitlines()[0], "shapenet-55")
    g = parser.add_argument_group("reader (= data.collection.* of configs/data/shapenet_ulip2.yaml)")
    g.add_argument("--image-dir", default=None,
                   help="rendered_images | only_rgb_depth_images (default: whichever exists)")
    g.add_argument("--view-angles", type=_int_list, default=None, help="comma-separated azimuths (default: all 30)")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--background", default="white")
    g.add_argument("--n-points", type=int, default=8192)
    g.add_argument("--val-split", type=float, default=0.2)
    g.add_argument("--test-split", type=float, default=0.0)
    g.add_argument("--drop-synsets", default="02992529", help="comma-separated synsets to drop")
    g.add_argument("--max-per-synset", type=int, default=None, help="first k ids per synset (smoke runs)")
    g.add_argument("--no-check-images", action="store_true", help="do not decode every render up front")
    return parser


def reader_kwargs(args):
    return dict(image_dir=args.image_dir, view_angles=args.view_angles, image_size=args.image_size,
                background=args.background, n_points=args.n_points, val_split=args.val_split,
                test_split=args.test_split, drop_synsets=[s for s in args.drop_synsets.split(",") if s],
                max_per_synset=args.max_per_synset, points_in_memory=True, check_images=not args.no_check_images)


def main(argv=None) -> int:
    return run(read_ulip_shapenet, reader_kwargs, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
