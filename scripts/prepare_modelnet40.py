#!/usr/bin/env python
"""ModelNet40 (ULIP's 8192-point FPS .dat, or the 2048-point h5 files) -> validated collection + feature store.

    python scripts/prepare_modelnet40.py --root data/modelnet40_normal_resampled [--cache .cache] [--skip-bad]
        [--format auto|dat|h5] [--split test] [--teacher-name ... --pretrained ... | --checkpoint PATH]

Reader defaults = configs/eval/modelnet40.yaml (the zero-shot benchmark ``eval=[modelnet40]``).
"""
from __future__ import annotations

import sys

from captionless3d.data.readers import read_modelnet40
from captionless3d.prepare_data import make_parser, none_or_int, run


def build_parser():
    parser = make_parser(__doc__.splitlines()[0], "modelnet40_normal_resampled")
    g = parser.add_argument_group("reader (= eval.modelnet40.collection.* of configs/eval/modelnet40.yaml)")
    g.add_argument("--format", default="auto", help="auto | dat | h5")
    g.add_argument("--split", default="test", help="test | train")
    g.add_argument("--n-points", type=none_or_int, default=None, help="points kept (default: all stored)")
    return parser


def reader_kwargs(args):
    return dict(format=args.format, split=args.split, n_points=args.n_points)


def main(argv=None) -> int:
    return run(read_modelnet40, reader_kwargs, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
