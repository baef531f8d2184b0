#!/usr/bin/env python
"""Merge several training runs into one paper-style table with mean ± std over seeds.

    python scripts/compare.py outputs/train/multiruns/<time> [more run dirs ...] [--benchmark heldout] [--out DIR]

Every ``summary.json`` found below the given paths is one run; runs are grouped by their experiment name. The table
is printed as Markdown and written as results.md/.csv/.json into ``--out`` (default: the first path).
``--same-category`` also prints the full-gallery retrieval breakdown where every query ranks only its own category and
writes it into ``<out>/samecat/``. The tables carry the chance levels the runs recorded. The logic is
:mod:`captionless3d.evaluation.compare`; ``scripts/reproduce_table.py`` trains runs and tabulates them the same way.

Paired comparison (variants trained with paired seeds: the same seed gives every variant the same initial weights and
batch order): runs are also grouped by experiment and seed (``seed`` of summary.json, else the top-level ``seed:`` of
``<run dir>/.hydra/config.yaml``; two runs with the same experiment and seed are an error). Every variant is compared
with ``--reference`` (default ``baseline``) over the seeds both have: mean difference, its 95 % Student-t interval
across seeds and wins/n per ``--paired-metrics`` key (default: the headline metrics of
``captionless3d.evaluation.paired``); printed after the table and written as paired.md/.json into ``--out``. It is
skipped, with a message on stderr, when the reference has no finished run or when some run's seed is unknown.
Put ``--paired-metrics`` / ``--lower-is-better`` (both take several values) after the run directories.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from captionless3d.errors import Captionless3DError
from captionless3d.evaluation.compare import (
    collect_runs,
    collect_seeded_runs,
    find_summaries,
    merge_runs,
    paired_report,
    paired_title,
    save_paired,
    seed_of,
    unseeded_runs,
)
from captionless3d.evaluation.paired import DEFAULT_PAIRED_METRICS, paired_markdown

__all__ = ["main", "seed_of", "find_summaries", "collect_seeded_runs", "paired_report"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--benchmark", default="heldout", help="benchmark name (eval=[...] entry)")
    parser.add_argument("--out", type=Path, default=None, help="where to write results.md/.csv/.json")
    parser.add_argument("--same-category", action="store_true",
                        help="also the same-category gallery retrieval table (written into <out>/samecat/)")
    parser.add_argument("--reference", default="baseline",
                        help="experiment every other one is compared with, seed by seed (default: baseline)")
    parser.add_argument("--paired-metrics", nargs="+", metavar="KEY", default=None,
                        help=f"metric keys of the paired comparison (default: {' '.join(DEFAULT_PAIRED_METRICS)})")
    parser.add_argument("--lower-is-better", nargs="+", metavar="PATTERN", default=[],
                        help="metric key patterns (fnmatch) where lower is better "
                             "in the paired comparison (default: none)")
    args = parser.parse_args(argv)
    try:
        summaries = find_summaries(args.paths)
        groups = collect_runs(args.paths, args.benchmark, summaries)
        unseeded = unseeded_runs(summaries, args.benchmark)
        if not unseeded:
            collect_seeded_runs(summaries, args.benchmark)  # a duplicate (experiment, seed) fails before any output
        merged = merge_runs(groups, summaries, args.benchmark)
        table = merged.main_table()
        print(table.to_markdown())
        out = args.out or args.paths[0]
        table.save(out)
        if args.same_category:
            samecat = merged.samecat_table()
            print(samecat.to_markdown())
            samecat.save(Path(out) / "samecat")
        if unseeded:
            print(f"paired comparison skipped: {len(unseeded)} run(s) record no seed (no 'seed' in summary.json, no "
                  f"'seed:' in .hydra/config.yaml), e.g. {unseeded[0]}", file=sys.stderr)
        else:
            comparison = paired_report(summaries, args.benchmark, args.reference, args.paired_metrics,
                                       lower_is_better=args.lower_is_better)
            if comparison is None:
                print(f"paired comparison skipped: reference experiment {args.reference!r} has no finished "
                      f"'{args.benchmark}' run (experiments: {sorted(groups)}; see --reference)", file=sys.stderr)
            else:
                print(paired_markdown(comparison, title=paired_title(args.benchmark, args.reference)))
                save_paired(comparison, out, args.benchmark)
    except Captionless3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
