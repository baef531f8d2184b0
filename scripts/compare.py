#!/usr/bin/env python
"""Merge several training runs into one paper-style table with mean ± std over seeds.

    python scripts/compare.py outputs/train/multiruns/<time> [more run dirs ...] [--benchmark heldout] [--out DIR]

Every ``summary.json`` found below the given paths is one run; runs are grouped by their experiment name. The table
is printed as Markdown and written as results.md/.csv/.json into ``--out`` (default: the first path). ``--same-category``
also prints the full-gallery retrieval breakdown where every query ranks only its own category and writes it into
``<out>/samecat/``. ``scripts/reproduce_table.py`` trains the runs and builds on the functions here.

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
import json
import sys
from pathlib import Path
from typing import Sequence

import yaml

from captionless3d.errors import Captionless3DError, DataError
from captionless3d.evaluation.paired import (
    DEFAULT_PAIRED_METRICS,
    PairedComparison,
    paired_differences,
    paired_markdown,
    paired_to_dict,
)
from captionless3d.evaluation.callbacks import ORACLE_NOTE
from captionless3d.evaluation.oracle import ORACLE_NAME
from captionless3d.evaluation.report import ResultsTable, mean_std_table
from captionless3d.evaluation.runner import PROTOCOL
from captionless3d.utils.atomic import atomic_write_bytes, atomic_write_json

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


def oracle_runs(summaries: list[tuple[Path, dict]], benchmark: str) -> list[dict[str, float]]:
    """The distinct teacher-oracle metric dicts of the runs (``summary["oracle"][benchmark]``; one per teacher and
    world, since the oracle does not depend on the student), restricted to the keys they all share."""
    found: list[dict[str, float]] = []
    for _, summary in summaries:
        oracle = (summary.get("oracle") or {}).get(benchmark)
        if oracle and oracle not in found:
            found.append(dict(oracle))
    if not found:
        return []
    shared = set.intersection(*(set(o) for o in found))
    return [{k: o[k] for k in shared} for o in found]


def with_oracle(groups: dict[str, list[dict[str, float]]], summaries: list[tuple[Path, dict]],
                benchmark: str) -> dict[str, list[dict[str, float]]]:
    """``groups`` plus a ``teacher-oracle`` entry from the runs' summaries (when they have one)."""
    oracles = oracle_runs(summaries, benchmark)
    return {**groups, ORACLE_NAME: oracles} if oracles else dict(groups)


def comparison_table(
    groups: dict[str, list[dict[str, float]]],
    benchmark: str,
    *,
    columns: Sequence[tuple[str, str, str]] | None = None,
    title: str | None = None,
    params_m: dict[str, float] | None = None,
    protocol_note: str = "",
) -> ResultsTable:
    """The mean ± std table of ``groups`` (:func:`collect_runs`, or :func:`with_oracle`: a ``teacher-oracle`` group
    becomes a reference row); ``columns`` default: the paper's layout."""
    counts = {name: len(runs) for name, runs in groups.items() if name != ORACLE_NAME}
    extra = {} if columns is None else {"columns": columns}
    oracle_note = f" {ORACLE_NOTE}" if ORACLE_NAME in groups else ""
    return mean_std_table(
        groups,
        params_m=params_m,
        protocol=f"{PROTOCOL} Mean ± sample std over runs {counts}." + oracle_note
        + (f" {protocol_note}" if protocol_note else ""),
        title=title or f"{benchmark}: mean ± std over seeds",
        references=[ORACLE_NAME],
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


def find_seed(summary_path: Path, summary: dict) -> int | None:
    """The run's seed: ``summary["seed"]``, else the top-level ``seed:`` of ``<run dir>/.hydra/config.yaml``; ``None``
    when neither exists. :class:`DataError` (naming the file) when the one found is not an integer or the YAML file is
    unreadable."""
    if "seed" in summary:
        source, seed = summary_path, summary["seed"]
    else:
        config_path = summary_path.parent / ".hydra" / "config.yaml"
        if not config_path.is_file():
            return None
        try:
            config = yaml.safe_load(config_path.read_text("utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"{config_path}: unreadable Hydra config ({exc})") from exc
        if not isinstance(config, dict) or "seed" not in config:
            return None
        source, seed = config_path, config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"{source}: 'seed' must be an integer, got {seed!r}")
    return seed


def seed_of(summary_path: Path, summary: dict) -> int:
    """:func:`find_seed`, or :class:`DataError` naming the summary file when the run records no seed."""
    seed = find_seed(summary_path, summary)
    if seed is None:
        raise DataError(f"{summary_path}: no seed (neither a 'seed' key in it nor a top-level 'seed:' in "
                        f"{summary_path.parent / '.hydra' / 'config.yaml'})")
    return seed


def _finished(summaries: list[tuple[Path, dict]], benchmark: str) -> list[tuple[Path, dict, dict[str, float]]]:
    """``(path, summary, metrics)`` of the runs with ``benchmark`` metrics (the others :func:`collect_runs` reports)."""
    found = []
    for summary_path, summary in summaries:
        metrics = (summary.get("metrics") or {}).get(benchmark)
        if metrics:
            found.append((summary_path, summary, metrics))
    return found


def unseeded_runs(summaries: list[tuple[Path, dict]], benchmark: str) -> list[Path]:
    """Summary files of the finished ``benchmark`` runs whose seed is unknown (:func:`find_seed` is ``None``)."""
    return [path for path, summary, _ in _finished(summaries, benchmark) if find_seed(path, summary) is None]


def collect_seeded_runs(summaries: list[tuple[Path, dict]], benchmark: str) -> dict[str, dict[int, dict[str, float]]]:
    """``{experiment: {seed: metrics}}`` of the finished ``benchmark`` runs (unfinished ones are left out silently;
    :func:`collect_runs` reports them). :class:`DataError` when a run has no seed (:func:`seed_of`) or when two runs
    share experiment and seed (naming both summary files)."""
    groups: dict[str, dict[int, dict[str, float]]] = {}
    origin: dict[tuple[str, int], Path] = {}
    for summary_path, summary, metrics in _finished(summaries, benchmark):
        experiment, seed = experiment_of(summary_path, summary), seed_of(summary_path, summary)
        if (experiment, seed) in origin:
            raise DataError(f"two runs of experiment {experiment!r} with seed {seed}: {origin[(experiment, seed)]} "
                            f"and {summary_path} (pass only one of them)")
        origin[(experiment, seed)] = summary_path
        groups.setdefault(experiment, {})[seed] = dict(metrics)
    return groups


def paired_report(
    summaries: list[tuple[Path, dict]],
    benchmark: str,
    reference: str = "baseline",
    metrics: Sequence[str] | None = None,
    *,
    lower_is_better: Sequence[str] = (),
) -> PairedComparison | None:
    """The paired comparison of every experiment with ``reference`` over matched seeds
    (:func:`captionless3d.evaluation.paired.paired_differences` on :func:`collect_seeded_runs`); ``metrics`` default:
    ``DEFAULT_PAIRED_METRICS``. ``None`` when ``reference`` has no finished ``benchmark`` run (the caller says so);
    :class:`DataError` for a run without seed or a duplicate (experiment, seed)."""
    runs = collect_seeded_runs(summaries, benchmark)
    if reference not in runs:
        return None
    return paired_differences(runs, reference, DEFAULT_PAIRED_METRICS if metrics is None else metrics,
                              lower_is_better)


def paired_title(benchmark: str, reference: str) -> str:
    return f"{benchmark}: paired differences vs {reference} over matched seeds"


def save_paired(comparison: PairedComparison, directory: str | Path, benchmark: str) -> dict[str, Path]:
    """Write ``paired.md`` and ``paired.json`` (with the benchmark name) atomically into ``directory``."""
    d = Path(directory)
    paths = {"md": d / "paired.md", "json": d / "paired.json"}
    md = paired_markdown(comparison, title=paired_title(benchmark, comparison.reference))
    atomic_write_bytes(paths["md"], md.encode("utf-8"))
    atomic_write_json(paths["json"], {"benchmark": benchmark, **paired_to_dict(comparison)})
    return paths


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
                        help="metric keys of the paired comparison (default: %s)" % " ".join(DEFAULT_PAIRED_METRICS))
    parser.add_argument("--lower-is-better", nargs="+", metavar="PATTERN", default=[],
                        help="metric key patterns (fnmatch) where lower is better in the paired comparison "
                             "(default: none)")
    args = parser.parse_args(argv)
    try:
        summaries = find_summaries(args.paths)
        groups = collect_runs(args.paths, args.benchmark, summaries)
        unseeded = unseeded_runs(summaries, args.benchmark)
        if not unseeded:
            collect_seeded_runs(summaries, args.benchmark)  # a duplicate (experiment, seed) fails before any output
        params_m = params_of_runs(summaries, args.benchmark)
        table = comparison_table(with_oracle(groups, summaries, args.benchmark), args.benchmark, params_m=params_m)
        print(table.to_markdown())
        out = args.out or args.paths[0]
        table.save(out)
        if args.same_category:
            samecat = samecat_table(with_oracle(groups, summaries, args.benchmark), args.benchmark, params_m=params_m)
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
