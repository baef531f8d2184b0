"""The compact end-of-run table for the console; the full tables stay in the results files.

Eleven numbers per model: the paper's eight photo↔shape retrieval numbers (paper protocol, top-1 / top-5, I→S and
S→I, without and with background), zero-shot top-1 / top-5 and the full-gallery I→S R@1 without background, with a
``chance`` line and the path of the full results.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from captionless3d.evaluation.report import ResultsTable, format_chance

__all__ = ["COMPACT_COLUMNS", "compact_table"]

#: (metric key, group, sub-header) of the compact table, in print order.
COMPACT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("retrieval/nobg/paper/i2s_top1", "w/o bg I→S", "top1"),
    ("retrieval/nobg/paper/i2s_top5", "w/o bg I→S", "top5"),
    ("retrieval/nobg/paper/s2i_top1", "w/o bg S→I", "top1"),
    ("retrieval/nobg/paper/s2i_top5", "w/o bg S→I", "top5"),
    ("retrieval/bg/paper/i2s_top1", "w/ bg I→S", "top1"),
    ("retrieval/bg/paper/i2s_top5", "w/ bg I→S", "top5"),
    ("retrieval/bg/paper/s2i_top1", "w/ bg S→I", "top1"),
    ("retrieval/bg/paper/s2i_top5", "w/ bg S→I", "top5"),
    ("zeroshot/top1", "zero-shot", "top1"),
    ("zeroshot/top5", "zero-shot", "top5"),
    ("retrieval/nobg/gallery/i2s_r1", "gallery", "I→S R@1"),
)


def _cell(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.1f}" if math.isfinite(value) else "n/a"


def compact_table(table: ResultsTable, full_results: str | Path | None = None,
                  columns: Sequence[tuple[str, str, str]] = COMPACT_COLUMNS) -> str:
    """``table``'s rows (and its chance levels) in :data:`COMPACT_COLUMNS` as an aligned plain-text table, under the
    table's title and above the path of the full results (``full_results``). Columns no row has are left out;
    ``±`` std is not shown (the files have it)."""
    cols = [c for c in columns if any(c[0] in r.metrics for r in table.rows)]
    names = ["model"] + [h for _, _, h in cols]
    body = [[r.name] + [_cell(r.metrics.get(k)) for k, _, _ in cols] for r in table.rows]
    if table.chance:
        body.append(["chance"] + [format_chance(table.chance.get(k)) for k, _, _ in cols])
    widths = [max(len(row[i]) for row in body + [names]) for i in range(len(names))]
    # a group label (e.g. "w/o bg I→S") is printed once, over the first column of its group
    groups = [""] + [g if i == 0 or cols[i - 1][1] != g else "" for i, (_, g, _) in enumerate(cols)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [table.title, _group_line(groups, widths), line(names), line(["-" * w for w in widths])]
    out += [line(row) for row in body]
    if full_results is not None:
        out.append(f"full results: {full_results}")
    return "\n".join(out)


def _group_line(groups: Sequence[str], widths: Sequence[int]) -> str:
    """The group labels, each left-aligned over the first column of its group (spanning the group's width)."""
    text = ""
    position = 0
    for i, (group, width) in enumerate(zip(groups, widths)):
        start = position if i == 0 else position + 2
        if group:
            text = text.ljust(start) + group + " "
        position = start + width
    return text.rstrip()
