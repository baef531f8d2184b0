"""Paired multi-seed comparison of variants against a reference variant (pure functions, no I/O).

Variants (experiments such as ``baseline``, ``i2i``, ``avg``) are trained with paired seeds: the same seed gives every
variant the same initial weights and batch order, so run ``(variant, seed)`` is compared with ``(reference, seed)``.
For every variant other than the reference and every chosen metric (key convention of :mod:`.report`, values in
percent) :func:`paired_differences` computes, over the seeds both have:

* the paired differences ``d_s = variant_s − reference_s`` (percentage points), their mean and sample std (ddof = 1);
* a two-sided 95 % confidence interval of the mean difference across seeds, Student's t with ``n − 1`` degrees of
  freedom: ``mean ± t(0.975, n − 1) · sd / √n``; undefined (``None``) when ``n = 1``;
* wins / ties / losses: seeds where the variant is strictly better / exactly equal / worse. Better is higher, except
  for metrics matching one of the ``lower_is_better`` patterns (:func:`fnmatch.fnmatchcase` on the key), where it is
  lower. The difference itself is always ``variant − reference`` (its sign is not flipped).

Seeds that only one side of a pair has are excluded from the paired statistics and listed in the notes; a variant
without any seed in common with the reference gets no row. :func:`paired_markdown` and :func:`paired_to_dict` render
the result (Markdown table with a caption that says what each part of a cell means; JSON-safe dict, ``None`` for an
undefined interval).
"""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from captionless3d.errors import DataError
from captionless3d.evaluation.report import DEFAULT_COLUMNS

__all__ = [
    "CONFIDENCE",
    "DEFAULT_PAIRED_METRICS",
    "PairedComparison",
    "PairedStat",
    "caption",
    "format_cell",
    "is_lower_better",
    "metric_label",
    "paired_differences",
    "paired_markdown",
    "paired_to_dict",
    "t_quantile",
]

#: Two-sided confidence level of the interval of the mean paired difference.
CONFIDENCE = 0.95

#: Headline metrics compared by default (keys of :mod:`.report`); those that no run reports are skipped.
DEFAULT_PAIRED_METRICS: tuple[str, ...] = (
    "zeroshot/top1",
    "retrieval/nobg/gallery/i2s_r1",
    "retrieval/bg/gallery/i2s_r1",
    "retrieval/nobg/paper/i2s_top1",
    "retrieval/nobg/gallery_samecat/i2s_r1",
)

# Runs of one comparison: {experiment: {seed: {metric key: value in percent}}}.
SeededRuns = Mapping[str, Mapping[int, Mapping[str, float]]]


@dataclass(frozen=True)
class PairedStat:
    """Paired statistics of one (variant, metric) against the reference, over the ``n`` paired ``seeds``.

    ``differences[i]`` = variant − reference at ``seeds[i]`` (percentage points); ``mean_diff`` their mean, ``sd_diff``
    their sample std (ddof = 1) and ``ci_low``/``ci_high`` the 95 % Student-t interval of the mean (all three ``None``
    when ``n = 1``). ``wins + ties + losses == n``; "win" = variant strictly better (lower when ``lower_is_better``).
    """

    variant: str
    metric: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    mean_diff: float
    sd_diff: float | None
    ci_low: float | None
    ci_high: float | None
    wins: int
    ties: int
    losses: int
    lower_is_better: bool = False

    @property
    def n(self) -> int:
        """Number of paired seeds."""
        return len(self.seeds)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ``None`` for an undefined std / interval (``n = 1``), never NaN."""
        return {
            "variant": self.variant,
            "metric": self.metric,
            "n": self.n,
            "seeds": list(self.seeds),
            "differences": list(self.differences),
            "mean_diff": self.mean_diff,
            "sd_diff": self.sd_diff,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "confidence": CONFIDENCE,
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "lower_is_better": self.lower_is_better,
        }


@dataclass(frozen=True)
class PairedComparison:
    """Result of :func:`paired_differences`.

    ``stats[(variant, metric)]``: one :class:`PairedStat` per variant with paired seeds and metric that both it and the
    reference report. ``variants``: every experiment except the reference, in input order (rows of the table);
    ``metrics``: the chosen keys that some run reports (columns). The rest explains what was left out:
    ``variant_only_seeds`` / ``reference_only_seeds`` (per variant: seeds one side lacks, excluded),
    ``unpaired_variants`` (no seed in common: no row), ``missing_metrics`` (chosen keys no run reports) and
    ``unreported`` (per variant: chosen keys that it or the reference does not report: empty cells).
    """

    reference: str
    variants: tuple[str, ...]
    metrics: tuple[str, ...]
    stats: dict[tuple[str, str], PairedStat]
    lower_is_better: tuple[str, ...] = ()
    variant_only_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    reference_only_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    unpaired_variants: tuple[str, ...] = ()
    missing_metrics: tuple[str, ...] = ()
    unreported: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def paired_variants(self) -> tuple[str, ...]:
        """Variants with at least one seed in common with the reference (the table's rows)."""
        return tuple(v for v in self.variants if v not in self.unpaired_variants)

    def notes(self) -> list[str]:
        """Plain-text notes on everything excluded from the paired statistics (one sentence each)."""
        ref = self.reference
        out: list[str] = []
        for v in self.variants:
            if self.variant_only_seeds.get(v):
                out.append(f"{v}: seeds {list(self.variant_only_seeds[v])} have no {ref} run with the same seed; "
                           "excluded from the paired statistics.")
            if v in self.unpaired_variants:
                out.append(f"{v}: no seed in common with {ref}; no paired row.")
            elif self.reference_only_seeds.get(v):
                out.append(f"{v}: {ref} seeds {list(self.reference_only_seeds[v])} have no {v} run with the same "
                           "seed; excluded from the paired statistics.")
            if v not in self.unpaired_variants and self.unreported.get(v):
                out.append(f"{v}: {list(self.unreported[v])} not reported by {v} or by {ref}; cells left empty.")
        if self.missing_metrics:
            out.append(f"metrics {list(self.missing_metrics)} are reported by no run; skipped.")
        return out


def is_lower_better(metric: str, patterns: Iterable[str]) -> bool:
    """Whether ``metric`` matches one of the lower-is-better ``patterns`` (:func:`fnmatch.fnmatchcase`, e.g. an exact
    key or ``"*/median_rank"``)."""
    return any(fnmatch.fnmatchcase(metric, p) for p in patterns)


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student-t critical value for the mean of ``n >= 2`` paired differences: ``t((1 + confidence) / 2,
    df = n − 1)``, e.g. ``t_quantile(3) = 4.3027`` (df = 2)."""
    if n < 2:
        raise DataError(f"t_quantile: the interval needs at least 2 paired seeds, got n = {n}")
    try:
        from scipy.stats import t as student_t
    except ImportError as exc:  # pragma: no cover - scipy comes with scikit-learn / openpoints in this environment
        raise DataError(f"paired confidence intervals need scipy (pip install scipy): {exc}") from exc
    return float(student_t.ppf(0.5 + confidence / 2, n - 1))


def _value(runs: SeededRuns, experiment: str, seed: int, metric: str) -> float:
    v = runs[experiment][seed][metric]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)):
        raise DataError(f"paired_differences: metric {metric!r} of {experiment!r} seed {seed} is not a finite number "
                        f"({v!r})")
    return float(v)


def _reported(runs: SeededRuns, experiment: str, metric: str) -> bool:
    """Whether every run of ``experiment`` reports ``metric``; :class:`DataError` when only some do."""
    have = sorted(s for s, m in runs[experiment].items() if metric in m)
    if not have:
        return False
    lack = sorted(s for s, m in runs[experiment].items() if metric not in m)
    if lack:
        raise DataError(f"paired_differences: runs of {experiment!r} report {metric!r} for seeds {have} but not for "
                        f"seeds {lack}")
    return True


def _stat(runs: SeededRuns, variant: str, reference: str, metric: str, seeds: Sequence[int], lower: bool) -> PairedStat:
    v = np.asarray([_value(runs, variant, s, metric) for s in seeds], dtype=np.float64)
    r = np.asarray([_value(runs, reference, s, metric) for s in seeds], dtype=np.float64)
    d = v - r
    n = len(d)
    mean = float(d.mean())
    sd = lo = hi = None
    if n >= 2:
        sd = float(d.std(ddof=1))
        half = t_quantile(n) * sd / math.sqrt(n)
        lo, hi = mean - half, mean + half
    better = v < r if lower else v > r
    wins, ties = int(better.sum()), int((v == r).sum())
    return PairedStat(variant=variant, metric=metric, seeds=tuple(seeds), differences=tuple(float(x) for x in d),
                      mean_diff=mean, sd_diff=sd, ci_low=lo, ci_high=hi, wins=wins, ties=ties,
                      losses=n - wins - ties, lower_is_better=lower)


def paired_differences(
    runs: SeededRuns,
    reference: str = "baseline",
    metrics: Sequence[str] | None = None,
    lower_is_better: Iterable[str] = (),
) -> PairedComparison:
    """Paired statistics of every variant against ``reference``, matched by seed.

    ``runs``: ``{experiment: {seed: {metric key: value in percent}}}`` (one run per experiment and seed). ``metrics``:
    the keys to compare, in column order (default :data:`DEFAULT_PAIRED_METRICS`); keys that no run reports are
    skipped (``missing_metrics``), never filled in. ``lower_is_better``: key patterns where a lower value is better
    (default: none; all current metrics are higher-is-better).

    :class:`DataError` when ``reference`` is not in ``runs`` (naming the experiments there), when only some runs of
    one experiment report a chosen metric, or when a compared value is not a finite number.
    """
    if reference not in runs:
        raise DataError(f"paired_differences: reference experiment {reference!r} not among the runs "
                        f"({sorted(runs)})")
    patterns = tuple(lower_is_better)
    wanted = list(dict.fromkeys(DEFAULT_PAIRED_METRICS if metrics is None else metrics))
    present = {k for exp in runs.values() for m in exp.values() for k in m}
    chosen = tuple(k for k in wanted if k in present)
    ref_has = {k: _reported(runs, reference, k) for k in chosen}
    ref_seeds = set(runs[reference])

    variants = tuple(str(v) for v in runs if v != reference)
    stats: dict[tuple[str, str], PairedStat] = {}
    variant_only: dict[str, tuple[int, ...]] = {}
    reference_only: dict[str, tuple[int, ...]] = {}
    unpaired: list[str] = []
    unreported: dict[str, tuple[str, ...]] = {}
    for variant in variants:
        seeds = set(runs[variant])
        common = sorted(seeds & ref_seeds)
        if seeds - ref_seeds:
            variant_only[variant] = tuple(sorted(seeds - ref_seeds))
        if ref_seeds - seeds:
            reference_only[variant] = tuple(sorted(ref_seeds - seeds))
        if not common:
            unpaired.append(variant)
            continue
        skipped = []
        for metric in chosen:
            if not (_reported(runs, variant, metric) and ref_has[metric]):
                skipped.append(metric)
                continue
            stats[(variant, metric)] = _stat(runs, variant, reference, metric, common,
                                             is_lower_better(metric, patterns))
        if skipped:
            unreported[variant] = tuple(skipped)
    return PairedComparison(
        reference=reference, variants=variants, metrics=chosen, stats=stats, lower_is_better=patterns,
        variant_only_seeds=variant_only, reference_only_seeds=reference_only, unpaired_variants=tuple(unpaired),
        missing_metrics=tuple(k for k in wanted if k not in present), unreported=unreported,
    )


_LABELS = {key: f"{group} {header}" for key, group, header in DEFAULT_COLUMNS}


def metric_label(metric: str) -> str:
    """Column header of ``metric``: the results table's "group header" when it has one, plus the key itself."""
    return f"{_LABELS[metric]} (`{metric}`)" if metric in _LABELS else f"`{metric}`"


def _signed(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}"


def format_cell(stat: PairedStat, digits: int = 1) -> str:
    """``+1.2 [-0.3, +2.7] 4/5`` (mean difference, 95 % CI, wins/n); ``[CI undefined, n=1]`` when ``n = 1``; ties, if
    any, follow as ``(1 tie)``."""
    ci = ("[CI undefined, n=1]" if stat.ci_low is None or stat.ci_high is None
          else f"[{_signed(stat.ci_low, digits)}, {_signed(stat.ci_high, digits)}]")
    cell = f"{_signed(stat.mean_diff, digits)} {ci} {stat.wins}/{stat.n}"
    if stat.ties:
        cell += f" ({stat.ties} tie{'s' if stat.ties > 1 else ''})"
    return cell


def caption(comparison: PairedComparison) -> str:
    """What each part of a cell of :func:`paired_markdown` means."""
    ref = comparison.reference
    level = f"{CONFIDENCE:.0%}"
    text = (
        f"Each cell: `mean [low, high] wins/n`. mean = mean over the n paired seeds of the difference variant − {ref} "
        f"(percentage points; runs matched by seed, the same seed giving both the same initial weights and batch "
        f"order). [low, high] = two-sided {level} confidence interval of that mean across seeds, Student's t with "
        f"n − 1 degrees of freedom: mean ± t(0.975, n − 1) · sd / √n, sd = sample std (ddof = 1) of the differences; "
        f"'CI undefined' when n = 1. wins/n = number of paired seeds where the variant is strictly better than {ref}; "
        "ties (equal values) are counted separately, shown as '(k ties)', and are neither wins nor losses; "
        "losses = n − wins − ties. Better = higher"
    )
    if comparison.lower_is_better:
        text += (f", except for metrics marked ↓ (matching {list(comparison.lower_is_better)}), where lower is better "
                 "and a negative difference is an improvement")
    return text + "."


def paired_markdown(comparison: PairedComparison, *, title: str | None = None, digits: int = 1) -> str:
    """Markdown: a title, one row per paired variant (not the reference), one column per metric
    (:func:`format_cell`), then the caption and the notes on excluded seeds / variants / metrics."""
    title = title or f"Paired differences vs {comparison.reference} over seeds"
    lines = [f"# {title}", ""]
    rows = comparison.paired_variants
    if not comparison.metrics or not rows:
        lines += ["No paired comparison: " + ("none of the chosen metrics is reported by any run."
                                              if not comparison.metrics else
                                              f"no variant shares a seed with {comparison.reference}."), ""]
    else:
        head = ["Variant"] + [metric_label(m) + (" ↓" if is_lower_better(m, comparison.lower_is_better) else "")
                              for m in comparison.metrics]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in rows:
            cells = [v] + [format_cell(comparison.stats[(v, m)], digits) if (v, m) in comparison.stats else "–"
                           for m in comparison.metrics]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**How to read.** {caption(comparison)}", ""]
    notes = comparison.notes()
    if notes:
        lines += ["**Notes.**", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def paired_to_dict(comparison: PairedComparison) -> dict[str, Any]:
    """JSON-safe dict: reference, metrics, confidence, one entry per (variant, metric) in ``rows`` (table order; see
    :meth:`PairedStat.to_dict`), the exclusions and the notes. Undefined intervals are ``None``."""
    rows = [comparison.stats[(v, m)].to_dict() for v in comparison.paired_variants for m in comparison.metrics
            if (v, m) in comparison.stats]
    return {
        "reference": comparison.reference,
        "variants": list(comparison.variants),
        "metrics": list(comparison.metrics),
        "lower_is_better": list(comparison.lower_is_better),
        "confidence": CONFIDENCE,
        "method": caption(comparison),
        "rows": rows,
        "variant_only_seeds": {k: list(v) for k, v in comparison.variant_only_seeds.items()},
        "reference_only_seeds": {k: list(v) for k, v in comparison.reference_only_seeds.items()},
        "unpaired_variants": list(comparison.unpaired_variants),
        "missing_metrics": list(comparison.missing_metrics),
        "unreported": {k: list(v) for k, v in comparison.unreported.items()},
        "notes": comparison.notes(),
    }
