#!/usr/bin/env python
"""Merge several training runs into one paper-style table with mean ± std over seeds.

    python scripts/compare.py outputs/train/multiruns/<time> [more run dirs ...] [--benchmark heldout] [--out DIR]

Every ``summary.json`` found below the given paths is one run; runs are grouped by their experiment name. The table
is printed as Markdown and written as results.md/.csv/.json into ``--out`` (default: the first path). ``--same-category``
also prints the full-gallery retrieval breakdown where every query ranks only its own category and writes it into
``<out>/samecat/``. ``scripts/reproduce_table.py`` trains the runs and builds on the functions here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from captionless3d.errors import Captionless3DError, DataError
from captionless3d.evaluation.report import ResultsTable, mean_std_table
from captionless3d.evaluation.runner import PROTOCOL

# The same-category breakdown of the full-gallery protocol: each query ranks only the gallery items of its own
# category (the eval's ``retrieval/{nobg|bg}/gallery_samecat/...`` keys), i.e. fine-grained retrieval among
# same-category distractors. (metric key, group header, column header) as report.DEFAULT_COLUMNS.
SAMECAT_COLUMNS: tuple[tuple[str, str, str], ...] = tuple(
    (f"retrieval/{bg}/gallery_samecat/{direction}_{metric}", f"same-cat {label} {arrow}", header)
    for bg, label in (("nobg", "w/o bg"), ("bg", "w/ bg"))
    for direction, arrow in (("i2s", "I→S"), ("s2i", "S→I"))
    for metric, header in (("r1", "R@1"), ("r5", "R@5"), ("map", "mAP"))
)


def find_summaries(paths: list[Path]) -> list[tuple[Path, dict]]:
    """``(path, parsed summary)`` of every ``summary.json`` below ``paths``, in path order."""
    found: list[tuple[Path, dict]] = []
    for root in paths:
        if not root.exists():
            raise DataError(f"{root}: no such run directory")
        for summary_path in sorted(root.glob("**/summary.json")):
            try:
                found.append((summary_path, json.loads(summary_path.read_text("utf-8"))))
            except (OSError, json.JSONDecodeError) as exc:
                raise DataError(f"{summary_path}: unreadable run summary ({exc})") from exc
    return found


def collect_runs(
    paths: list[Path], benchmark: str, summaries: list[tuple[Path, dict]] | None = None
) -> dict[str, list[dict[str, float]]]:
    """``{experiment: [metrics of each run]}`` from every ``summary.json`` below ``paths`` (or from ``summaries``,
    as :func:`find_summaries` returns them)."""
    groups: dict[str, list[dict[str, float]]] = {}
    for summary_path, summary in find_summaries(paths) if summaries is None else summaries:
        metrics = (summary.get("metrics") or {}).get(benchmark)
        if not metrics:
            print(f"skipping {summary_path}: no '{benchmark}' metrics (run unfinished?)", file=sys.stderr)
            continue
        groups.setdefault(experiment_of(summary_path, summary), []).append(metrics)
    if not groups:
        raise DataError(f"no finished runs with '{benchmark}' metrics under {[str(p) for p in paths]}")
    return groups


def experiment_of(summary_path: Path, summary: dict) -> str:
    """The row a run belongs to: its experiment name (the run directory's name when the summary has none)."""
    return str(summary.get("experiment", summary_path.parent.name))


def params_of_runs(summaries: list[tuple[Path, dict]], benchmark: str) -> dict[str, float]:
    """``{experiment: #params in M}`` from the runs' own ``results/<benchmark>/results.json`` (where written)."""
    params: dict[str, float] = {}
    for summary_path, summary in summaries:
        try:
            rows = json.loads((summary_path.parent / "results" / benchmark / "results.json").read_text("utf-8"))["rows"]
            value = rows[0]["params_m"]
        except (OSError, ValueError, LookupError, TypeError):
            continue
        if isinstance(value, (int, float)):
            params.setdefault(experiment_of(summary_path, summary), float(value))
    return params


def comparison_table(
    groups: dict[str, list[dict[str, float]]],
    benchmark: str,
    *,
    columns: Sequence[tuple[str, str, str]] | None = None,
    title: str | None = None,
    params_m: dict[str, float] | None = None,
    protocol_note: str = "",
) -> ResultsTable:
    """The mean ± std table of ``groups`` (:func:`collect_runs`); ``columns`` default: the paper's layout."""
    counts = {name: len(runs) for name, runs in groups.items()}
    extra = {} if columns is None else {"columns": columns}
    return mean_std_table(
        groups,
        params_m=params_m,
        protocol=f"{PROTOCOL} Mean ± sample std over runs {counts}." + (f" {protocol_note}" if protocol_note else ""),
        title=title or f"{benchmark}: mean ± std over seeds",
        **extra,
    )


def samecat_table(
    groups: dict[str, list[dict[str, float]]], benchmark: str, *, params_m: dict[str, float] | None = None,
    protocol_note: str = "",
) -> ResultsTable:
    """The same-category gallery breakdown (``.../gallery_samecat/...`` metrics only), mean ± std over runs."""
    only = {name: [{k: v for k, v in m.items() if "/gallery_samecat/" in k} for m in runs] for name, runs in groups.items()}
    if not any(m for runs in only.values() for m in runs):
        raise DataError(f"no same-category retrieval metrics ('.../gallery_samecat/...') in the '{benchmark}' runs")
    note = ("Same-category: the full-gallery protocol where each query ranks only the gallery items of its own "
            "category (same-category distractors only).")
    return comparison_table(
        only, benchmark, columns=SAMECAT_COLUMNS, params_m=params_m,
        title=f"{benchmark}: same-category gallery retrieval, mean ± std over seeds",
        protocol_note=f"{note} {protocol_note}".strip(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun directories")
    parser.add_argument("--benchmark", default="heldout", help="benchmark name (eval=[...] entry)")
    parser.add_argument("--out", type=Path, default=None, help="where to write results.md/.csv/.json")
    parser.add_argument("--same-category", action="store_true",
                        help="also the same-category gallery retrieval table (written into <out>/samecat/)")
    args = parser.parse_args(argv)
    try:
        summaries = find_summaries(args.paths)
        groups = collect_runs(args.paths, args.benchmark, summaries)
        params_m = params_of_runs(summaries, args.benchmark)
        table = comparison_table(groups, args.benchmark, params_m=params_m)
        print(table.to_markdown())
        out = args.out or args.paths[0]
        table.save(out)
        if args.same_category:
            samecat = samecat_table(groups, args.benchmark, params_m=params_m)
            print(samecat.to_markdown())
            samecat.save(Path(out) / "samecat")
    except Captionless3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
