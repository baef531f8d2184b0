"""Results tables in the paper's layout (Markdown / CSV / JSON), and the metric key convention.

Metric key convention (flat ``dict[str, float]``, values in percent; every producer and the table use it):

=================================================  ==============================================================
``zeroshot/top1``, ``zeroshot/top5``               overall (instance) accuracy, as the paper
``zeroshot/class_mean_top1``                       mean per-class recall over classes with test samples
``retrieval/{nobg|bg}/paper/{i2s|s2i}_top{1|5}``   paper protocol: shuffled batches of 128, exact-pair hit
``retrieval/{nobg|bg}/gallery/{i2s|s2i}_r{k}``     full gallery of unique shapes, recall@k (k = 1, 5, 10)
``retrieval/{nobg|bg}/gallery/{i2s|s2i}_map``      full gallery, mean average precision
``retrieval/{nobg|bg}/gallery_samecat/...``        full gallery, each query ranks only its own category
``linear_probe/{top1|class_mean_top1}``            linear probe on frozen embeddings (L2 weight chosen on val)
``finetune/{top1|class_mean_top1}``                full fine-tune + linear head (epoch chosen on val)
``efficiency/{zeroshot_top1|{nobg|bg}/gallery_i2s_r1}``  student / teacher oracle x 100 (:mod:`.oracle`)
=================================================  ==============================================================

``nobg`` = "w/o background" (photo x mask on black), ``bg`` = "w/ background" (original photo); ``i2s`` = image->shape,
``s2i`` = shape->image. A zero-shot prompt set other than the single template uses its own prefix, e.g.
``zeroshot_openai_imagenet/top1`` (``runner.templates``; :func:`zeroshot_keys` ``prefix=``). :func:`zeroshot_keys`,
:func:`paper_keys`,
:func:`gallery_keys` and :func:`classification_keys` (linear probe / fine-tune) turn the dicts returned by the
evaluation functions into these keys.

:class:`ResultsTable` holds one row per model (name, #params in M, metrics, notes, optional std over seeds) and a
protocol statement that is written into every output file. :func:`mean_std_table` merges several runs (seeds) per
model into "mean ± std" cells (sample std, ddof = 1; a single run shows the mean only).
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from captionless3d.errors import DataError
from captionless3d.evaluation.chance import CHANCE_METHOD
from captionless3d.utils.atomic import atomic_write_bytes

__all__ = [
    "DEFAULT_PROTOCOL",
    "DEFAULT_COLUMNS",
    "ResultRow",
    "ResultsTable",
    "classification_keys",
    "format_chance",
    "gallery_keys",
    "mean_std_table",
    "paper_keys",
    "zeroshot_keys",
]

DEFAULT_PROTOCOL = (
    "Retrieval, paper protocol: pairs shuffled with torch.randperm (seed 0) and cut into batches of 128 (last one "
    "smaller); cosine similarity inside each batch; a hit only when the exact paired index is ranked (top-1 / top-5); "
    "another photo of the same CAD model in the batch counts as a miss; ties resolved by index. "
    "Retrieval, full gallery (ours): every image ranks all unique shapes (and every shape all images); any item of "
    "the right shape counts as a hit; recall@k and mAP; 'same-cat' ranks only the query's own category. "
    "Zero-shot: overall top-1/top-5 accuracy over test samples, cosine to L2-normalised prompt embeddings. "
    "Linear probe: logistic regression on frozen, train-standardised embeddings, L2 weight chosen on val; "
    "fine-tune: encoder copy + linear head trained on train, epoch chosen on val; both report test top-1 and "
    "class-mean top-1 (mAcc). "
    "w/o bg = photo multiplied by its mask (black background); w/ bg = original photo. "
    "Checkpoint selected on the validation split (never on test). All numbers in percent."
)

Background = Literal["nobg", "bg"]

# (metric key, group header, column header) in the paper's order: retrieval table first, then our extra columns.
DEFAULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("retrieval/nobg/paper/i2s_top1", "w/o bg I→S", "Top-1"),
    ("retrieval/nobg/paper/i2s_top5", "w/o bg I→S", "Top-5"),
    ("retrieval/nobg/paper/s2i_top1", "w/o bg S→I", "Top-1"),
    ("retrieval/nobg/paper/s2i_top5", "w/o bg S→I", "Top-5"),
    ("retrieval/bg/paper/i2s_top1", "w/ bg I→S", "Top-1"),
    ("retrieval/bg/paper/i2s_top5", "w/ bg I→S", "Top-5"),
    ("retrieval/bg/paper/s2i_top1", "w/ bg S→I", "Top-1"),
    ("retrieval/bg/paper/s2i_top5", "w/ bg S→I", "Top-5"),
    ("zeroshot/top1", "zero-shot", "Top-1"),
    ("zeroshot/top5", "zero-shot", "Top-5"),
    ("zeroshot_openai_imagenet/top1", "zero-shot 80 tpl", "Top-1"),
    ("zeroshot_openai_imagenet/top5", "zero-shot 80 tpl", "Top-5"),
    ("retrieval/nobg/gallery/i2s_r1", "gallery w/o bg I→S", "R@1"),
    ("retrieval/nobg/gallery/i2s_r5", "gallery w/o bg I→S", "R@5"),
    ("retrieval/nobg/gallery/i2s_map", "gallery w/o bg I→S", "mAP"),
    ("retrieval/nobg/gallery/s2i_r1", "gallery w/o bg S→I", "R@1"),
    ("retrieval/nobg/gallery/s2i_r5", "gallery w/o bg S→I", "R@5"),
    ("retrieval/nobg/gallery/s2i_map", "gallery w/o bg S→I", "mAP"),
    ("retrieval/bg/gallery/i2s_r1", "gallery w/ bg I→S", "R@1"),
    ("retrieval/bg/gallery/i2s_r5", "gallery w/ bg I→S", "R@5"),
    ("retrieval/bg/gallery/i2s_map", "gallery w/ bg I→S", "mAP"),
    ("retrieval/bg/gallery/s2i_r1", "gallery w/ bg S→I", "R@1"),
    ("retrieval/bg/gallery/s2i_r5", "gallery w/ bg S→I", "R@5"),
    ("retrieval/bg/gallery/s2i_map", "gallery w/ bg S→I", "mAP"),
    ("retrieval/nobg/gallery_samecat/i2s_r1", "same-cat w/o bg I→S", "R@1"),
    ("retrieval/bg/gallery_samecat/i2s_r1", "same-cat w/ bg I→S", "R@1"),
    ("efficiency/zeroshot_top1", "distillation efficiency", "zero-shot Top-1"),
    ("efficiency/nobg/gallery_i2s_r1", "distillation efficiency", "gallery w/o bg I→S R@1"),
    ("efficiency/bg/gallery_i2s_r1", "distillation efficiency", "gallery w/ bg I→S R@1"),
    ("linear_probe/top1", "linear probe", "Top-1"),
    ("linear_probe/class_mean_top1", "linear probe", "mAcc"),
    ("finetune/top1", "fine-tune", "Top-1"),
    ("finetune/class_mean_top1", "fine-tune", "mAcc"),
)


def _check_bg(background: str) -> None:
    if background not in ("nobg", "bg"):
        raise DataError(f"background: must be 'nobg' (w/o background) or 'bg' (w/ background), got {background!r}")


def _floats(result: Mapping[str, Any], names: Iterable[str]) -> dict[str, float]:
    return {n: float(result[n]) for n in names if n in result and isinstance(result[n], (int, float, np.number))}


def zeroshot_keys(result: Mapping[str, Any], *, prefix: str = "zeroshot") -> dict[str, float]:
    """``zero_shot_metrics`` output -> ``{prefix}/top1``, ``{prefix}/top5``, ``{prefix}/class_mean_top1``."""
    return {f"{prefix}/{k}": v for k, v in _floats(result, ("top1", "top5", "class_mean_top1")).items()}


def classification_keys(result: Mapping[str, Any],
                        prefix: Literal["linear_probe", "finetune"] | str) -> dict[str, float]:
    """``linear_probe`` / ``finetune_encoder`` output -> ``{prefix}/top1``, ``{prefix}/class_mean_top1``."""
    if not prefix or "/" in prefix:
        raise DataError(f"classification_keys: prefix must be a non-empty name without '/', got {prefix!r}")
    return {f"{prefix}/{k}": v for k, v in _floats(result, ("top1", "class_mean_top1")).items()}


def paper_keys(result: Mapping[str, Any], background: Background) -> dict[str, float]:
    """``paper_batch_retrieval`` output -> ``retrieval/{background}/paper/{i2s|s2i}_top{1|5}``."""
    _check_bg(background)
    names = ("i2s_top1", "i2s_top5", "s2i_top1", "s2i_top5")
    return {f"retrieval/{background}/paper/{k}": v for k, v in _floats(result, names).items()}


def gallery_keys(result: Mapping[str, Any], background: Background) -> dict[str, float]:
    """``full_gallery_retrieval`` output -> ``retrieval/{background}/gallery/...`` and ``.../gallery_samecat/...``."""
    _check_bg(background)

    def metric_names(d: Mapping[str, Any]) -> list[str]:
        return [k for k in d if k.startswith(("i2s_", "s2i_")) and not k.endswith("num_queries")]

    out = {f"retrieval/{background}/gallery/{k}": v for k, v in _floats(result, metric_names(result)).items()}
    same = result.get("samecat")
    if isinstance(same, Mapping):
        out.update({f"retrieval/{background}/gallery_samecat/{k}": v
                    for k, v in _floats(same, metric_names(same)).items()})
    return out


@dataclass
class ResultRow:
    """One model: ``metrics`` uses the key convention; ``std`` (same keys) is filled when runs were merged."""

    name: str
    params_m: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    std: dict[str, float] = field(default_factory=dict)
    n_runs: int = 1
    reference: bool = False  # a reference level (the teacher oracle), not a competing model: never bold

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params_m": self.params_m,
            "notes": self.notes,
            "n_runs": self.n_runs,
            "reference": self.reference,
            "metrics": dict(self.metrics),
            "std": dict(self.std),
        }


def _fmt(x: float | None, digits: int) -> str:
    if x is None:
        return "–"
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}"


def format_chance(value: float | None) -> str:
    """A chance level for a table cell: one decimal from 1 % up, two below (0.31), ``–`` when unknown."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


class ResultsTable:
    """Rows of models in the paper's table layout. ``protocol`` is written into every output file.

    ``chance`` (``{metric key: percent}``, :mod:`.chance`) adds a last ``chance`` line to the Markdown table (not a
    model: never bold, not a CSV row) and a ``chance`` entry to the JSON.
    """

    def __init__(
        self,
        rows: Sequence[ResultRow] = (),
        *,
        protocol: str = DEFAULT_PROTOCOL,
        title: str = "Results",
        columns: Sequence[tuple[str, str, str]] = DEFAULT_COLUMNS,
        digits: int = 1,
        chance: Mapping[str, float] | None = None,
    ) -> None:
        if not protocol or not protocol.strip():
            raise DataError("ResultsTable: protocol must be a non-empty description of how the numbers were obtained")
        self.rows: list[ResultRow] = []
        self.protocol = protocol.strip()
        self.title = title
        self.columns = tuple(columns)
        self.digits = int(digits)
        self.chance: dict[str, float] = {k: float(v) for k, v in (chance or {}).items()}
        for r in rows:
            self.add_row(r)

    # -- building -------------------------------------------------------------------------------------------------
    def add_row(self, row: ResultRow) -> ResultRow:
        if not row.name or not str(row.name).strip():
            raise DataError("ResultsTable: a row needs a non-empty model name")
        if any(r.name == row.name for r in self.rows):
            raise DataError(f"ResultsTable: duplicate model name {row.name!r}")
        for k, v in row.metrics.items():
            if not isinstance(v, (int, float, np.number)):
                raise DataError(f"ResultsTable: metric {k!r} of {row.name!r} is not a number ({type(v).__name__})")
        row.metrics = {k: float(v) for k, v in row.metrics.items()}
        row.std = {k: float(v) for k, v in row.std.items()}
        self.rows.append(row)
        return row

    def add(
        self, name: str, metrics: Mapping[str, float], *, params_m: float | None = None, notes: str = "",
        reference: bool = False,
    ) -> ResultRow:
        return self.add_row(ResultRow(name=name, params_m=params_m, metrics=dict(metrics), notes=notes,
                                      reference=reference))

    # -- rendering ------------------------------------------------------------------------------------------------
    def _visible_columns(self) -> list[tuple[str, str, str]]:
        return [c for c in self.columns if any(c[0] in r.metrics for r in self.rows)]

    def _all_keys(self) -> list[str]:
        known = [c[0] for c in self.columns]
        extra = sorted({k for r in self.rows for k in r.metrics} - set(known))
        return [k for k in known if any(k in r.metrics for r in self.rows)] + extra

    def _cell(self, row: ResultRow, key: str) -> str:
        if key not in row.metrics:
            return "–"
        s = _fmt(row.metrics[key], self.digits)
        if key in row.std:
            s += f" ± {_fmt(row.std[key], self.digits)}"
        return s

    def to_markdown(self) -> str:
        """One table: Model | #Params (M) | paper retrieval w/o bg, w/ bg | zero-shot | full gallery | ...

        Columns without any value are left out; the best value of each column among the models is bold (higher
        is better for all; reference rows such as the teacher oracle are never bold).
        The protocol statement and per-model notes follow the table.
        """
        cols = self._visible_columns()
        head = ["Model", "#Params (M)"] + [f"{g} {h}" for _, g, h in cols]
        lines = [f"# {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        best: dict[str, float] = {}
        models = [r for r in self.rows if not r.reference]
        if len(models) > 1:
            for key, _, _ in cols:
                vals = [r.metrics[key] for r in models if key in r.metrics and math.isfinite(r.metrics[key])]
                if len(vals) > 1:  # bold only when there is something to compare with
                    best[key] = max(vals)
        for r in self.rows:
            cells = [r.name, _fmt(r.params_m, 1)]
            for key, _, _ in cols:
                c = self._cell(r, key)
                if (not r.reference and key in best and key in r.metrics
                        and round(r.metrics[key], self.digits) == round(best[key], self.digits)):
                    c = f"**{c}**"
                cells.append(c)
            lines.append("| " + " | ".join(cells) + " |")
        if self.chance:
            lines.append("| chance | – | " + " | ".join(format_chance(self.chance.get(k)) for k, _, _ in cols) + " |")
        lines += ["", f"**Protocol.** {self.protocol}", ""]
        if self.chance:
            lines += [f"**Chance.** {CHANCE_METHOD}", ""]
        if any(r.n_runs > 1 for r in self.rows):
            lines += ["Cells with ± are mean ± sample standard deviation over runs (seeds); runs per model: "
                      + ", ".join(f"{r.name}: {r.n_runs}" for r in self.rows) + ".", ""]
        noted = [r for r in self.rows if r.notes]
        if noted:
            lines += ["**Notes.**", ""] + [f"- {r.name}: {r.notes}" for r in noted] + [""]
        return "\n".join(lines)

    def to_csv(self) -> str:
        """One line per model; columns: model, params_m, n_runs, every metric key (then ``<key>_std`` if any run
        was merged), notes, protocol (the same statement on every line, so the file is self-describing)."""
        keys = self._all_keys()
        std_keys = [k for k in keys if any(k in r.std for r in self.rows)]
        header = ["model", "params_m", "n_runs"] + keys + [f"{k}_std" for k in std_keys] + ["notes", "protocol"]
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for r in self.rows:
            w.writerow(
                [r.name, "" if r.params_m is None else r.params_m, r.n_runs]
                + [repr(r.metrics[k]) if k in r.metrics else "" for k in keys]
                + [repr(r.std[k]) if k in r.std else "" for k in std_keys]
                + [r.notes, self.protocol]
            )
        return buf.getvalue()

    def to_json(self) -> str:
        payload = {
            "title": self.title,
            "protocol": self.protocol,
            "key_convention": (
                "zeroshot/{top1,top5,class_mean_top1}; retrieval/{nobg|bg}/paper/{i2s|s2i}_top{1|5}; "
                "retrieval/{nobg|bg}/gallery/{i2s|s2i}_{r<k>|map}; retrieval/{nobg|bg}/gallery_samecat/...; "
                "linear_probe/{top1,class_mean_top1}; finetune/{top1,class_mean_top1}; "
                "efficiency/{zeroshot_top1,{nobg|bg}/gallery_i2s_r1} (student / teacher oracle); values in percent"
            ),
            "columns": [{"key": k, "group": g, "header": h} for k, g, h in self.columns],
            "rows": [r.to_dict() for r in self.rows],
        }
        if self.chance:
            payload["chance"] = dict(self.chance)
            payload["chance_method"] = CHANCE_METHOD
        return json.dumps(payload, indent=2, sort_keys=False, allow_nan=True)

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Write ``results.md``, ``results.csv`` and ``results.json`` atomically into ``directory``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        paths = {"md": d / "results.md", "csv": d / "results.csv", "json": d / "results.json"}
        atomic_write_bytes(paths["md"], self.to_markdown().encode("utf-8"))
        atomic_write_bytes(paths["csv"], self.to_csv().encode("utf-8"))
        atomic_write_bytes(paths["json"], self.to_json().encode("utf-8"))
        return paths

    @classmethod
    def from_json(cls, text: str) -> ResultsTable:
        obj = json.loads(text)
        table = cls(
            protocol=obj["protocol"],
            title=obj.get("title", "Results"),
            columns=[(c["key"], c["group"], c["header"]) for c in obj.get("columns", [])] or DEFAULT_COLUMNS,
            chance=obj.get("chance"),
        )
        for r in obj["rows"]:
            table.add_row(ResultRow(**r))
        return table


def mean_std_table(
    runs: Mapping[str, Sequence[Mapping[str, float]]] | Sequence[Mapping[str, Any]],
    *,
    params_m: Mapping[str, float] | None = None,
    notes: Mapping[str, str] | None = None,
    protocol: str = DEFAULT_PROTOCOL,
    title: str = "Results (mean ± std over runs)",
    columns: Sequence[tuple[str, str, str]] = DEFAULT_COLUMNS,
    references: Sequence[str] = (),
    chance: Mapping[str, float] | None = None,
) -> ResultsTable:
    """Merge several runs (e.g. seeds) per model into one row with mean and sample std (ddof = 1) per metric.
    Models named in ``references`` become reference rows (e.g. the teacher oracle: never bold); ``chance``: the
    chance levels of the runs' split (:class:`ResultsTable`).

    ``runs`` is either ``{model: [metrics_run1, metrics_run2, ...]}`` or a flat list of metric dicts that each carry a
    ``"model"`` name (and optionally ``"params_m"``). Every run of a model must have the same metric keys
    (:class:`DataError` otherwise, naming the model and the keys). A model with one run gets no std.
    """
    grouped: dict[str, list[dict[str, float]]] = {}
    pm = dict(params_m or {})
    if isinstance(runs, Mapping):
        for name, lst in runs.items():
            grouped[str(name)] = [dict(m) for m in lst]
    else:
        for i, run in enumerate(runs):
            if "model" not in run:
                raise DataError(f"mean_std_table: run {i} has no 'model' key (needed to group runs by model)")
            run = dict(run)
            name = str(run.pop("model"))
            if "params_m" in run:
                pm.setdefault(name, float(run.pop("params_m")))
            grouped.setdefault(name, []).append(run)
    table = ResultsTable(protocol=protocol, title=title, columns=columns, chance=chance)
    for name, lst in grouped.items():
        if not lst:
            raise DataError(f"mean_std_table: model {name!r} has no runs")
        keys = set(lst[0])
        for j, m in enumerate(lst[1:], start=1):
            if set(m) != keys:
                diff = sorted(keys.symmetric_difference(m))
                raise DataError(f"mean_std_table: runs of {name!r} have different metric keys (run 0 vs run {j}: "
                                f"{diff})")
        mean: dict[str, float] = {}
        std: dict[str, float] = {}
        for k in sorted(keys):
            vals = np.asarray([float(m[k]) for m in lst], dtype=np.float64)
            mean[k] = float(vals.mean())
            if len(vals) > 1:
                std[k] = float(vals.std(ddof=1))
        table.add_row(
            ResultRow(name=name, params_m=pm.get(name), metrics=mean, std=std, n_runs=len(lst),
                      notes=(notes or {}).get(name, ""), reference=name in references)
        )
    return table
