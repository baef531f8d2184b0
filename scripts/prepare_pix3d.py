#!/usr/bin/env python
"""Pix3D (pix3d.json, img/, mask/, model/) -> validated collection (2048 points per mesh) + feature store.

    python scripts/prepare_pix3d.py --root data/pix3d [--cache .cache] [--skip-bad]
        [--teacher-name ... --pretrained ... | --checkpoint PATH]

Reader defaults = configs/eval/pix3d.yaml (the photo<->shape benchmark ``eval=[pix3d]``).
"""
from __future__ import annotations

import sys

from captionless3d.data.readers import read_pix3d
from captionless3d.prepare_data import make_parser, run


def build_parser():
    parser = make_parser(__doc__.splitlines()[0], "pix3d")
    g = parser.add_argument_group("reader (= eval.pix3d.collection.* of configs/eval/pix3d.yaml)")
    g.add_argument("--image-size", type=int, default=224)
    g.add_argument("--n-points", type=int, default=2048)
    return parser


def reader_kwargs(args):
    return dict(image_size=args.image_size, n_points=args.n_points)


def main(argv=None) -> int:
    return run(read_pix3d, reader_kwargs, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
