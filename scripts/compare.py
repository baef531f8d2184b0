#!/usr/bin/env python
"""Merge several training runs into one paper-style table with mean ± std over seeds.

    python scripts/compare.py outputs/train/multiruns/<time> [more run dirs ...] [--benchmark heldout] [--out DIR]

Every ``summary.json`` found below the given paths is one run; runs are grouped by their experiment name. The table
is printed as Markdown and written as results.md/.csv/.json into ``--out`` (default: the first path).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from captionless3d.errors import Captionless3DError, DataError
from captionless3d.evaluation.report import mean_std_table
from captionless3d.evaluation.runner import PROTOCOL


def collect_runs(paths: list[Path], benchmark: str) -> dict[str, list[dict[str, float]]]:
    """``{experiment: [metrics of each run]}`` from every ``summary.json`` below ``paths``."""
    groups: dict[str, list[dict[str, float]]] = {}
    for root in paths:
        if not root.exists():
            raise DataError(f"{root}: no such run directory")
        for summary_path in sorted(root.glob("**/summary.json")):
            try:
                summary = json.loads(summary_path.read_text("utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{summary_path}: unreadable run summary ({exc})") from exc
            metrics = (summary.get("metrics") or {}).get(benchmark)
            if not metrics:
                print(f"skipping {summary_path}: no '{benchmark}' metrics (run unfinished?)", file=sys.stderr)
                continue
            groups.setdefault(str(summary.get("experiment", summary_path.parent.name)), []).append(metrics)
    if not groups:
        raise DataError(f"no finished runs with '{benchmark}' metrics under {[str(p) for p in paths]}")
    return groups


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--benchmark", default="heldout", help="benchmark name (eval=[...] entry)")
    parser.add_argument("--out", type=Path, default=None, help="where to write results.md/.csv/.json")
    args = parser.parse_args(argv)
    try:
        groups = collect_runs(args.paths, args.benchmark)
        counts = {name: len(runs) for name, runs in groups.items()}
        table = mean_std_table(
            groups,
            protocol=f"{PROTOCOL} Mean ± sample std over runs {counts}.",
            title=f"{args.benchmark}: mean ± std over seeds",
        )
        print(table.to_markdown())
        table.save(args.out or args.paths[0])
    except Captionless3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
