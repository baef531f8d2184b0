"""Merge finished training runs into tables: mean ± std over seeds, the same-category breakdown, the teacher-oracle
reference row, chance levels, and the paired comparison against a reference variant.

A run is a directory with a ``summary.json`` (written by ``python -m captionless3d.train``); runs are grouped by
their experiment name, and by (experiment, seed) for the paired comparison (``seed`` of summary.json, else the
top-level ``seed:`` of ``<run dir>/.hydra/config.yaml``; two runs with the same experiment and seed are an error).
The chance levels come from the runs' own summaries (``chance`` / ``test_split``, computed once at evaluation time by
:mod:`captionless3d.evaluation.chance`). ``scripts/compare.py`` and ``scripts/reproduce_table.py`` are command lines
over these functions.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from captionless3d.errors import DataError
from captionless3d.evaluation.callbacks import ORACLE_NOTE
from captionless3d.evaluation.oracle import ORACLE_NAME
from captionless3d.evaluation.paired import (
    DEFAULT_PAIRED_METRICS,
    PairedComparison,
    paired_differences,
    paired_markdown,
    paired_to_dict,
)
from captionless3d.evaluation.report import ResultsTable, mean_std_table
from captionless3d.evaluation.runner import PROTOCOL
from captionless3d.utils.atomic import atomic_write_bytes, atomic_write_json

__all__ = [
    "SAMECAT_COLUMNS",
    "MergedRuns",
    "collect_runs",
    "collect_seeded_runs",
    "comparison_table",
    "experiment_of",
    "find_seed",
    "find_summaries",
    "merge_runs",
    "oracle_runs",
    "paired_report",
    "paired_title",
    "params_of_runs",
    "runs_chance",
    "samecat_table",
    "save_paired",
    "seed_of",
    "unseeded_runs",
    "with_oracle",
]

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
    chance: Mapping[str, float] | None = None,
) -> ResultsTable:
    """The mean ± std table of ``groups`` (:func:`collect_runs`, or :func:`with_oracle`: a ``teacher-oracle`` group
    becomes a reference row); ``columns`` default: the paper's layout. ``chance`` (:func:`runs_chance`) adds the
    chance row and its values to the protocol."""
    counts = {name: len(runs) for name, runs in groups.items() if name != ORACLE_NAME}
    extra = {} if columns is None else {"columns": columns}
    oracle_note = f" {ORACLE_NOTE}" if ORACLE_NAME in groups else ""
    table = mean_std_table(
        groups,
        params_m=params_m,
        protocol=f"{PROTOCOL} Mean ± sample std over runs {counts}." + oracle_note
        + (f" {protocol_note}" if protocol_note else ""),
        title=title or f"{benchmark}: mean ± std over seeds",
        references=[ORACLE_NAME],
        chance=chance,
        **extra,
    )
    if table.chance:
        table.protocol += " " + chance_note(table)
    return table


def samecat_table(
    groups: dict[str, list[dict[str, float]]], benchmark: str, *, params_m: dict[str, float] | None = None,
    protocol_note: str = "", chance: Mapping[str, float] | None = None,
) -> ResultsTable:
    """The same-category gallery breakdown (``.../gallery_samecat/...`` metrics only), mean ± std over runs."""
    only = {name: [{k: v for k, v in m.items() if "/gallery_samecat/" in k} for m in runs]
            for name, runs in groups.items()}
    if not any(m for runs in only.values() for m in runs):
        raise DataError(f"no same-category retrieval metrics ('.../gallery_samecat/...') in the '{benchmark}' runs")
    note = ("Same-category: the full-gallery protocol where each query ranks only the gallery items of its own "
            "category (same-category distractors only).")
    return comparison_table(
        only, benchmark, columns=SAMECAT_COLUMNS, params_m=params_m,
        title=f"{benchmark}: same-category gallery retrieval, mean ± std over seeds",
        protocol_note=f"{note} {protocol_note}".strip(), chance=chance,
    )


@dataclass
class MergedRuns:
    """The runs of one benchmark ready for the tables (:func:`merge_runs`): ``groups`` with the teacher-oracle row,
    ``params_m``, the shared test split's ``chance`` levels and ``sizes`` (:func:`runs_chance`)."""

    benchmark: str
    groups: dict[str, list[dict[str, float]]]
    params_m: dict[str, float]
    chance: dict[str, float]
    sizes: dict[str, int]

    def main_table(self) -> ResultsTable:
        """:func:`comparison_table` of the runs (paper layout, chance row)."""
        return comparison_table(self.groups, self.benchmark, params_m=self.params_m, chance=self.chance)

    def samecat_table(self) -> ResultsTable:
        """:func:`samecat_table` of the runs (:class:`DataError` when they have no same-category metrics)."""
        return samecat_table(self.groups, self.benchmark, params_m=self.params_m, chance=self.chance)


def merge_runs(groups: dict[str, list[dict[str, float]]], summaries: list[tuple[Path, dict]],
               benchmark: str) -> MergedRuns:
    """``groups`` (:func:`collect_runs` of ``summaries``) with what the tables add from the summaries: the
    parameter counts, the chance levels and test-split sizes, and the teacher-oracle row (what ``scripts/compare.py``
    and ``make reproduce`` both show)."""
    params_m = params_of_runs(summaries, benchmark)
    chance, sizes = runs_chance(summaries, benchmark)
    return MergedRuns(benchmark, with_oracle(groups, summaries, benchmark), params_m, chance, sizes)


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


def runs_chance(summaries: list[tuple[Path, dict]], benchmark: str) -> tuple[dict[str, float], dict[str, int]]:
    """``(chance levels, test-split sizes)`` of the runs' ``benchmark`` split, from their summaries (``chance`` and
    ``test_split``; keyed like the metrics). The runs share one split: a run evaluated on another one is reported on
    stderr and the first run's values are kept. ``({}, {})`` when no run records them (summaries older than the
    chance levels)."""
    found: list[tuple[Path, dict[str, float], dict[str, int]]] = []
    for path, summary, _ in _finished(summaries, benchmark):
        chance = (summary.get("chance") or {}).get(benchmark)
        if chance:
            found.append((path, dict(chance), dict((summary.get("test_split") or {}).get(benchmark) or {})))
    if not found:
        print(f"warning: no run summary records chance levels for '{benchmark}'; chance unknown", file=sys.stderr)
        return {}, {}
    first, chance, sizes = found[0]
    for path, _, other in found[1:]:
        if other != sizes:
            print(f"warning: {path.parent} was evaluated on another test split ({other}) than {first.parent} "
                  f"({sizes}); the chance row uses the latter", file=sys.stderr)
    return chance, sizes


def chance_note(table: ResultsTable) -> str:
    """One sentence for a table's protocol with the chance levels of its columns (rounded)."""
    shown = {key: round(table.chance[key], 3) for key, _, _ in table.columns if key in table.chance}
    return f"Chance levels of this test split (random ranking / classifier): {shown}."
