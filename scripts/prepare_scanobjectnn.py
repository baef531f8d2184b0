#!/usr/bin/env python
"""ScanObjectNN (h5_files of the chosen variant) -> validated collection + teacher feature store.

    python scripts/prepare_scanobjectnn.py --root data/ScanObjectNN/h5_files [--variant OBJ_ONLY] [--parts test]
        [--cache .cache] [--skip-bad] [--teacher-name ... --pretrained ... | --checkpoint PATH]

Reader defaults = configs/eval/scanobjectnn.yaml (the zero-shot benchmark ``eval=[scanobjectnn]``).
"""
from __future__ import annotations

import sys

from captionless3d.data.readers import read_scanobjectnn
from captionless3d.prepare_data import make_parser, none_or_int, run


def build_parser():
    parser = make_parser(__doc__.splitlines()[0], "ScanObjectNN/h5_files")
    g = parser.add_argument_group("reader (= eval.scanobjectnn.collection.* of configs/eval/scanobjectnn.yaml)")
    g.add_argument("--variant", default="OBJ_ONLY", help="OBJ_ONLY | OBJ_BG | PB_T50_RS | PB_T50_R ...")
    g.add_argument("--parts", default="test", help="comma-separated: training,test")
    g.add_argument("--n-points", type=none_or_int, default=None, help="points kept (default: all 2048)")
    return parser


def reader_kwargs(args):
    return dict(variant=args.variant, parts=[p for p in args.parts.split(",") if p], n_points=args.n_points)


def main(argv=None) -> int:
    return run(read_scanobjectnn, reader_kwargs, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
