#!/usr/bin/env python
"""Reproduce the synthetic-world comparison table in one command.

    python scripts/reproduce_table.py --preset quick|full [--out DIR] [--seeds 0 1 2] [--variants baseline avg ...]
                                      [--write-doc PATH] [--benchmark heldout] [-v] [hydra overrides ...]

Trains every variant × seed through ONE Hydra multirun of the real entry point (``python -m captionless3d.train -m
experiment=... seed=...``), then merges the runs with ``scripts/compare.py`` into the paper-style table (mean ± std
over seeds) and the same-category retrieval breakdown (each query ranks only shapes / photos of its own category),
both with a row of chance levels computed from the test split the runs were evaluated on.

Presets (:data:`PRESETS`): ``quick`` (baseline vs AVG, one seed, about 9 min with a warm world and teacher) and ``full``
(4 variants × 5 paired seeds, about 85 min with warm caches on the 2-core CPU machine), each followed by the paired
comparison against the baseline (``scripts/compare.py``: mean difference, 95 % interval across seeds, wins). Extra Hydra overrides are passed through to every
run and win over the preset's values (e.g. ``trainer.max_epochs=2``); everything containing ``=`` (or starting with
``~``), and everything after ``--``, is an override. Variants and seeds are chosen with ``--variants`` / ``--seeds``,
not with ``experiment=`` / ``seed=``.

Written into ``--out`` (default: the multirun directory):

- ``results.{md,csv,json}``: the paper-style table, mean ± std over seeds (the same files ``compare.py`` writes);
- ``samecat/results.{md,csv,json}``: the same-category retrieval table;
- ``reproduce.md`` / ``reproduce.json``: both tables with their chance rows, the preset, the overrides, the exact
  multirun command, the total and per-run wall time, the test-split sizes and how the chance levels were computed;
- ``runs.csv``: one line per run (experiment, seed, run dir, log, wall time, stage times).

``--write-doc PATH`` also writes a ``docs/synthetic_results.md``-style report (the reading is left to be written by
hand; an existing file is never overwritten). The raw output of the multirun is in ``<multirun dir>/reproduce.log``.

Exit status: 0 done; 1 a training run failed (the message names its run directory and log); 2 bad arguments or
overrides (nothing was trained); 130 interrupted.
"""
from __future__ import annotations

import argparse
import ast
import csv
import io
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ (compare.py) when imported from elsewhere

if TYPE_CHECKING:
    from captionless3d.evaluation.report import ResultsTable

# compare.py (and torch, through the evaluation package) is imported only to merge the runs, so that a bad argument
# or override is reported within a second.

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    """One named budget. ``max_epochs`` / ``n_points`` become ``trainer.max_epochs`` / ``data.loader.n_points`` (the
    held-out evaluation uses the same number of points); ``estimate_min`` is the expected wall time with warm world /
    teacher / feature caches on the 2-core CPU machine, ``budget_min`` the limit the preset is sized for."""

    description: str
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    max_epochs: int
    n_points: int
    estimate_min: float
    budget_min: float

    def overrides(self) -> list[str]:
        return [f"trainer.max_epochs={self.max_epochs}", f"data.loader.n_points={self.n_points}", *COMMON_OVERRIDES]


# Every preset: no progress bar (the multirun's output goes to a log file, not a terminal).
COMMON_OVERRIDES: tuple[str, ...] = ("trainer.enable_progress_bar=false",)

# Sizing (measured on the 2-core machine with warm caches, 2026-12-04): a PointNeXt-S step at batch 32 takes about
# 1.1 s at 512 points and about half that at 256, so 8 epochs x 40 steps at 256 points plus the held-out evaluation
# is about 4 min per run. The paired comparison needs >= 5 seeds of >= 4 variants in <= 90 min: 20 runs x 4 min.
PRESETS: dict[str, Preset] = {
    "quick": Preset(
        description="development check: baseline vs AVG, seed 0 of the full preset (its numbers are comparable with "
        "the full table's seed 0)",
        variants=("baseline", "avg"),
        seeds=(0,),
        max_epochs=8,
        n_points=256,
        estimate_min=9.0,
        budget_min=10.0,
    ),
    "full": Preset(
        description="the paired comparison: baseline (InfoNCE), I2I, (I2L)² and AVG, 5 paired seeds each, the "
        "default 8-epoch schedule at 256 points",
        variants=("baseline", "i2i", "i2l2", "avg"),
        seeds=(0, 1, 2, 3, 4),
        max_epochs=8,
        n_points=256,
        estimate_min=85.0,
        budget_min=90.0,
    ),
}


class UsageError(Exception):
    """Bad arguments or overrides: nothing was trained (exit 2)."""


# ---------------------------------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def stamp(self) -> str:
        return f"[{_duration(self.elapsed()):>8}]"

    def say(self, message: str) -> None:
        print(f"{self.stamp()} {message}", flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


_OPTIONS_WITH_VALUE = {"--preset", "--out", "--write-doc", "--benchmark", "--reference"}


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(script arguments, hydra overrides)``: tokens containing ``=`` or starting with ``~`` (not an option and not
    an option's value), and everything after ``--``, are overrides."""
    own: list[str] = []
    overrides: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            overrides += tokens[i + 1 :]
            break
        if token in _OPTIONS_WITH_VALUE and i + 1 < len(tokens):
            own += [token, tokens[i + 1]]
            i += 2
            continue
        if not token.startswith("-") and ("=" in token or token.startswith("~")):
            overrides.append(token)
        else:
            own.append(token)
        i += 1
    return own, overrides


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(preset: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The preset's overrides with those the user also gave dropped (the user's win), then the user's."""
    given = {_override_key(o) for o in extra}
    return [o for o in preset if _override_key(o) not in given] + list(extra)


def _hydra_quote(value: str) -> str:
    return value if re.fullmatch(r"[\w/.\-:@]+", value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


# ---------------------------------------------------------------------------------------------------------------------
# Stage 1: check the configuration before anything runs
# ---------------------------------------------------------------------------------------------------------------------
def check_config(variants: Sequence[str], seed: int, overrides: Sequence[str]) -> Path:
    """Compose the training config of every variant (as the multirun will); return the resolved sweep directory.
    A bad override, group option or variant name is a :class:`UsageError` with Hydra's message."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from captionless3d.hydra_utils import CONFIG_DIR

    sweep_dir: Path | None = None
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="train"):
        for variant in variants:
            try:
                cfg = compose("train", overrides=[f"experiment={variant}", f"seed={seed}", *overrides],
                              return_hydra_config=True)
                if sweep_dir is None:
                    sweep_dir = Path(str(OmegaConf.select(cfg, "hydra.sweep.dir"))).expanduser().resolve()
            except Exception as exc:  # Hydra's composition errors carry the useful message (available options ...)
                message = str(exc).strip() or type(exc).__name__
                raise UsageError(f"bad override or variant: the training config does not compose (experiment={variant}, "
                                 f"overrides {' '.join(overrides)}):\n{message}") from None
    assert sweep_dir is not None
    return sweep_dir


# ---------------------------------------------------------------------------------------------------------------------
# Stage 2: one Hydra multirun of the real entry point
# ---------------------------------------------------------------------------------------------------------------------
_LAUNCH = re.compile(r"\[HYDRA\]\s+#(\d+) : (.*)$")
_SUMMARY = re.compile(r"run summary: (\{.*\})\s*$")


@dataclass
class MultirunResult:
    returncode: int
    launched: dict[int, float]  # job number -> seconds since the multirun started, when Hydra launched it
    job_overrides: dict[int, str]
    seconds: float
    interrupted: bool = False


def run_multirun(command: list[str], log_path: Path, n_jobs: int, clock: Clock, verbose: bool) -> MultirunResult:
    """Run ``command``, write its output to ``log_path``, print one progress line per run (with an ETA)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    launched: dict[int, float] = {}
    job_overrides: dict[int, str] = {}
    done_seconds: list[float] = []
    interrupted = False
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                env=env, errors="replace")
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                if verbose:
                    print(line, end="", flush=True)
                launch = _LAUNCH.search(line)
                if launch:
                    job = int(launch.group(1))
                    launched[job] = time.perf_counter() - started
                    job_overrides[job] = launch.group(2).strip()
                    eta = ""
                    if done_seconds:
                        left = (n_jobs - job) * sum(done_seconds) / len(done_seconds)
                        eta = f", ≈ {_duration(left)} left"
                    clock.say(f"run {job + 1}/{n_jobs}: {_short_overrides(job_overrides[job])}{eta}")
                    continue
                summary = _SUMMARY.search(line)
                if summary:
                    try:
                        info = json.loads(summary.group(1))
                    except json.JSONDecodeError:
                        continue
                    if launched:
                        done_seconds.append(time.perf_counter() - started - launched[max(launched)])
                    clock.say(f"  finished in {info.get('wall_seconds', '?')} s: {info.get('run_dir', '')}")
            proc.wait()
        except KeyboardInterrupt:
            interrupted = True
            try:
                proc.wait(timeout=60)  # the child got the same SIGINT; let it write its checkpoint and stop
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
                proc.wait()
    return MultirunResult(proc.returncode, launched, job_overrides, time.perf_counter() - started, interrupted)


def _short_overrides(overrides: str) -> str:
    keep = [o for o in overrides.split() if o.split("=", 1)[0] in ("experiment", "seed")]
    return " ".join(keep) or overrides


# ---------------------------------------------------------------------------------------------------------------------
# Stage 3: check every run finished
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    job: int
    run_dir: Path
    experiment: str
    seed: int | None
    summary: dict | None
    config: Any

    @property
    def log(self) -> Path:
        logs = sorted(self.run_dir.glob("*.log"))
        return logs[0] if logs else self.run_dir / "train.log"

    def finished(self, benchmark: str) -> bool:
        return bool(self.summary and (self.summary.get("metrics") or {}).get(benchmark))


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every job directory Hydra created below ``sweep_dir`` (it has ``.hydra/``), in job order."""
    from omegaconf import OmegaConf

    runs = []
    for hydra_dir in sorted(sweep_dir.glob("*/.hydra")):
        run_dir = hydra_dir.parent
        try:
            config = OmegaConf.load(hydra_dir / "config.yaml")
        except Exception:
            config = OmegaConf.create({})
        try:
            job = int(OmegaConf.load(hydra_dir / "hydra.yaml").hydra.job.num)
        except Exception:
            prefix = run_dir.name.split("_", 1)[0]
            job = int(prefix) if prefix.isdigit() else 10**6 + len(runs)
        summary = None
        if (run_dir / "summary.json").is_file():
            try:
                summary = json.loads((run_dir / "summary.json").read_text("utf-8"))
            except (OSError, json.JSONDecodeError):
                summary = None
        seed = OmegaConf.select(config, "seed", default=None)
        runs.append(Run(job, run_dir, str(OmegaConf.select(config, "experiment_name", default=run_dir.name)),
                        None if seed is None else int(seed), summary, config))
    return sorted(runs, key=lambda r: r.job)


def _last_error(log: Path) -> str | None:
    """The last error line of a run log or the multirun output (an exception message or an ERROR log record)."""
    try:
        return _last_error_in(log.read_text("utf-8", errors="replace"))
    except OSError:
        return None


def _last_error_in(text: str) -> str | None:
    lines = text.splitlines()
    patterns = (
        re.compile(r"\]\[ERROR\] - (.*)$"),
        re.compile(r"^error: (.*)$"),
        re.compile(r"^((?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*)$"),
    )
    for line in reversed(lines):
        for pattern in patterns:
            match = pattern.search(line.strip())
            if match:
                return match.group(1).strip()
    return None


def _multirun_error(log_path: Path) -> tuple[dict[str, str], str | None]:
    """``(overrides of the run Hydra names as failed, its error line)`` from the multirun output: Hydra reports an
    unexpected exception (not one of ours, which the run logs itself) of the first failing run only, at the end."""
    try:
        text = log_path.read_text("utf-8", errors="replace")
    except OSError:
        return {}, None
    match = None
    for match in re.finditer(r"Error executing job with overrides: (\[.*\])", text):
        pass
    if match is None:
        return {}, None
    try:
        overrides = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in ast.literal_eval(match.group(1)) if "=" in o}
    except (ValueError, SyntaxError):
        overrides = {}
    return overrides, _last_error_in(text[match.end():])


def failure_report(runs: list[Run], result: MultirunResult, n_jobs: int, benchmark: str, log_path: Path) -> str:
    failed = [r for r in runs if not r.finished(benchmark)]
    finished = len(runs) - len(failed)
    lines = [f"error: {n_jobs - finished} of {n_jobs} training runs did not finish (the multirun exited with code "
             f"{result.returncode}); no table was written."]
    hydra_failed, hydra_reason = _multirun_error(log_path)
    for run in failed:
        reason = _last_error(run.log)
        if reason is None and hydra_reason and hydra_failed.get("experiment") == run.experiment \
                and hydra_failed.get("seed") == str(run.seed):
            reason = hydra_reason
        reason = reason or "no error message in its log (see the full multirun output below)"
        lines += [f"  run {run.job} (experiment={run.experiment} seed={run.seed}) failed: {reason}",
                  f"    run dir: {run.run_dir}",
                  f"    log:     {run.log}"]
    not_started = n_jobs - len(runs)
    if not_started > 0:
        lines.append(f"  {not_started} run(s) not started (the multirun stops at a failing run).")
        if not failed:
            reason = _last_error(log_path)
            if reason:
                lines.append(f"  multirun error: {reason}")
    lines.append(f"  full multirun output: {log_path}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Chance levels, from the test split the runs were evaluated on
# ---------------------------------------------------------------------------------------------------------------------
CHANCE_METHOD = (
    "Chance = the expected value of the metric for a random ranking (retrieval) or a random classifier "
    "(zero-shot, linear probe), computed exactly from the test-split sizes the runs report in "
    "results/<benchmark>/per_category.json: zero-shot top-k = min(k, C)/C over C categories; paper protocol top-k = "
    "Σ_batches min(k, b)/n over the shuffled batches of b ≤ paper_batch_size pairs; full gallery I→S R@k = min(k, N)/N "
    "over N gallery shapes, S→I R@k = 1 − C(Q−K, k)/C(Q, k) for K photos per shape among Q photos; mAP = the expected "
    "average precision of a random ranking with R relevant of N items, (R−1)/(N−1) + (N−R)/(N(N−1))·H_N; "
    "same-category: the same with N, Q restricted to the query's own category, averaged over queries (shapes of a "
    "category are assumed to have the same number of photos)."
)


def _p_hit_any(k: int, relevant: int, total: int) -> float:
    """P(at least one of ``relevant`` items is in the top ``k`` of a random ranking of ``total``)."""
    if total <= 0:
        return float("nan")
    if k >= total or relevant >= total:
        return 1.0
    return 1.0 - math.comb(total - relevant, k) / math.comb(total, k)


def _expected_ap(relevant: int, total: int) -> float:
    """Expected average precision of a random ranking of ``total`` items with ``relevant`` relevant ones."""
    if total <= 1:
        return 1.0
    harmonic = sum(1.0 / i for i in range(1, total + 1))
    return (relevant - 1) / (total - 1) + (total - relevant) / (total * (total - 1)) * harmonic


def _gallery_chance(metric: str, groups: list[tuple[int, int]], direction: str) -> float:
    """``groups``: ``(photos, shapes)`` of each ranking pool (the whole gallery, or one category each); the result is
    averaged over the queries of ``direction`` (i2s: photos, s2i: shapes)."""
    total_weight = 0.0
    value = 0.0
    for photos, shapes in groups:
        if photos <= 0 or shapes <= 0:
            continue
        per_shape = max(1, round(photos / shapes))
        if direction == "i2s":
            weight, relevant, pool = photos, 1, shapes
        else:
            weight, relevant, pool = shapes, per_shape, photos
        if metric == "map":
            v = _expected_ap(relevant, pool)
        elif metric.startswith("r") and metric[1:].isdigit():
            v = _p_hit_any(int(metric[1:]), relevant, pool)
        else:
            return float("nan")
        value += weight * v
        total_weight += weight
    return 100.0 * value / total_weight if total_weight else float("nan")


def chance_levels(per_category: Mapping[str, Any], keys: Iterable[str], paper_batch_size: int = 128) -> dict[str, float]:
    """``{metric key: chance in percent}`` for the ``keys`` that can be derived from ``per_category`` (the run's
    ``results/<benchmark>/per_category.json``)."""
    out: dict[str, float] = {}
    categories = per_category.get("zeroshot/top1") or {}
    n_classes = len(categories)
    for key in keys:
        parts = key.split("/")
        if len(parts) == 2 and n_classes and (parts[0] in ("linear_probe", "finetune") or parts[1] == "class_mean_top1"):
            out[key] = 100.0 / n_classes  # top-1 and class-mean top-1 of a classifier that ignores its input
        elif len(parts) == 2 and n_classes and parts[0].startswith("zeroshot") and re.fullmatch(r"top\d+", parts[1]):
            out[key] = 100.0 * min(int(parts[1][3:]), n_classes) / n_classes
        elif len(parts) == 4 and parts[0] == "retrieval" and parts[2] == "paper":
            pairs = sum(int(v.get("num_pairs", 0)) for v in (per_category.get(f"retrieval/{parts[1]}/paper") or {}).values())
            match = re.fullmatch(r"(i2s|s2i)_top(\d+)", parts[3])
            if pairs and match:
                k = int(match.group(2))
                batches = [paper_batch_size] * (pairs // paper_batch_size) + ([pairs % paper_batch_size] if pairs % paper_batch_size else [])
                out[key] = 100.0 * sum(min(k, b) for b in batches) / pairs
        elif len(parts) == 4 and parts[0] == "retrieval" and parts[2] in ("gallery", "gallery_samecat"):
            per_cat = per_category.get(f"retrieval/{parts[1]}/gallery") or {}
            match = re.fullmatch(r"(i2s|s2i)_(r\d+|map)", parts[3])
            if not per_cat or not match:
                continue
            sizes = [(int(v.get("num_images", 0)), int(v.get("num_shapes", 0))) for v in per_cat.values()]
            if parts[2] == "gallery":
                sizes = [(sum(p for p, _ in sizes), sum(s for _, s in sizes))]
            value = _gallery_chance(match.group(2), sizes, match.group(1))
            if math.isfinite(value):
                out[key] = value
    return out


def test_split_sizes(per_category: Mapping[str, Any]) -> dict[str, int]:
    gallery = per_category.get("retrieval/nobg/gallery") or {}
    return {
        "categories": len(per_category.get("zeroshot/top1") or {}),
        "gallery_shapes": sum(int(v.get("num_shapes", 0)) for v in gallery.values()),
        "photo_shape_pairs": sum(int(v.get("num_images", 0)) for v in gallery.values()),
    }


def run_chance(runs: list[Run], benchmark: str, keys: Iterable[str]) -> tuple[dict[str, float], dict[str, int]]:
    """Chance levels of the runs' test split (they share it; a disagreement is reported on stderr)."""
    keys = list(keys)
    results: list[tuple[Run, dict[str, float], dict[str, int]]] = []
    for run in runs:
        path = run.run_dir / "results" / benchmark / "per_category.json"
        try:
            per_category = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        batch = _select(run.config, f"eval.{benchmark}.runner.paper_batch_size")
        results.append((run, chance_levels(per_category, keys, int(batch or 128)), test_split_sizes(per_category)))
    if not results:
        print(f"warning: no run wrote results/{benchmark}/per_category.json; chance levels unknown", file=sys.stderr)
        return {}, {}
    first, chance, sizes = results[0]
    for run, other, other_sizes in results[1:]:
        if other_sizes != sizes:
            print(f"warning: {run.run_dir} was evaluated on another test split ({other_sizes}) than {first.run_dir} "
                  f"({sizes}); the chance row uses the latter", file=sys.stderr)
    return chance, sizes


def _select(config: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(config, key, default=None)
    except Exception:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Stage 4: tables and reports
# ---------------------------------------------------------------------------------------------------------------------
def _fmt_chance(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _visible_columns(table: ResultsTable) -> list[tuple[str, str, str]]:
    return [c for c in table.columns if any(c[0] in r.metrics for r in table.rows)]


def markdown_with_chance(table: ResultsTable, chance: Mapping[str, float]) -> str:
    """The table's Markdown with a last ``chance`` row (not a model: never bold, never in the CSV/JSON rows)."""
    lines = table.to_markdown().split("\n")
    columns = _visible_columns(table)
    row = "| chance | – | " + " | ".join(_fmt_chance(chance.get(key)) for key, _, _ in columns) + " |"
    header = next(i for i, line in enumerate(lines) if line.startswith("| Model"))
    end = header + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines.insert(end, row)
    return "\n".join(lines)


def _chance_note(table: ResultsTable, chance: Mapping[str, float]) -> str:
    shown = {key: round(chance[key], 3) for key, _, _ in table.columns if key in chance}
    return f"Chance levels of this test split (random ranking / classifier): {shown}."


def runs_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["job", "experiment", "seed", "run_dir", "log", "wall_seconds", "multirun_seconds", "peak_rss_mb",
              "stage_seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "stage_seconds": json.dumps(row.get("stage_seconds") or {}, sort_keys=True)})
    return buf.getvalue()


def runs_markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| run | experiment | seed | wall time (s) | in the multirun (s) | run dir |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['job']} | {row['experiment']} | {row['seed']} | {row['wall_seconds']} | "
                     f"{row['multirun_seconds']} | `{row['run_dir']}` |")
    return "\n".join(lines)


def per_run_rows(runs: list[Run], result: MultirunResult) -> list[dict[str, Any]]:
    rows = []
    starts = sorted(result.launched.items())
    for run in runs:
        measured = None
        if run.job in result.launched:
            later = [t for j, t in starts if t > result.launched[run.job]]
            measured = round((min(later) if later else result.seconds) - result.launched[run.job], 1)
        summary = run.summary or {}
        rows.append({
            "job": run.job,
            "experiment": run.experiment,
            "seed": run.seed,
            "run_dir": str(run.run_dir),
            "log": str(run.log),
            "wall_seconds": summary.get("wall_seconds"),
            "multirun_seconds": measured,
            "peak_rss_mb": summary.get("peak_rss_mb"),
            "stage_seconds": summary.get("stage_seconds"),
        })
    return rows


def training_budget(runs: list[Run]) -> dict[str, Any]:
    """What every run actually trained with (after the overrides), from the first run's saved config."""
    config = runs[0].config if runs else None
    keys = {"max_epochs": "trainer.max_epochs", "n_points": "data.loader.n_points", "batch_size": "data.loader.batch_size",
            "limit_train_batches": "trainer.limit_train_batches", "data": "data.name"}
    return {name: _select(config, key) for name, key in keys.items() if _select(config, key) is not None}


def _budget_text(budget: Mapping[str, Any]) -> str:
    if not budget:
        return ""
    text = f": {budget.get('max_epochs', '?')} epochs at {budget.get('n_points', '?')} points, batch {budget.get('batch_size', '?')}"
    if budget.get("limit_train_batches") is not None:
        text += f", at most {budget['limit_train_batches']} train batches per epoch"
    return text + (f", data `{budget['data']}`" if budget.get("data") else "")


def report_markdown(info: dict[str, Any], main_md: str, samecat_md: str, runs_md: str, paired_md: str = "") -> str:
    preset = info["preset"]
    sizes = info["test_split"]
    departs = (list(info["variants"]) != list(preset["variants"]) or list(info["seeds"]) != list(preset["seeds"])
               or bool(info["overrides"]["extra"]))
    return "\n".join([
        f"# Reproduced table: preset `{preset['name']}` ({len(info['variants'])} variants × {len(info['seeds'])} seeds)",
        "",
        f"Preset `{preset['name']}`: {preset['description']}."
        + (" **This run departs from the preset**: its variants, seeds and overrides are listed below." if departs
           else ""),
        "",
        f"- started {info['started']}, finished {info['finished']}; **total wall time {_duration(info['total_wall_seconds'])}** "
        f"(training multirun {_duration(info['training_wall_seconds'])}; preset estimate ≈ {preset['estimate_min']:g} min "
        f"with warm caches, budget {preset['budget_min']:g} min); mean per run {info['mean_run_seconds']} s",
        f"- variants {list(info['variants'])}, seeds {list(info['seeds'])}, benchmark `{info['benchmark']}`; "
        f"trained with{_budget_text(info['training']) or ' (unknown budget)'}",
        f"- preset overrides: `{' '.join(info['overrides']['preset'])}`",
        f"- extra overrides: `{' '.join(info['overrides']['extra']) or '(none)'}`",
        f"- test split: {sizes.get('categories', '?')} categories, {sizes.get('gallery_shapes', '?')} shapes, "
        f"{sizes.get('photo_shape_pairs', '?')} photo–shape pairs; teacher {', '.join(info['teacher_ids']) or '?'}",
        f"- code: {info['git'] or 'unknown'}; host: {info['host']['cpus']} CPUs, {info['host']['platform']}",
        "",
        "```bash",
        info["command_line"],
        info["multirun_command_line"],
        "```",
        "",
        main_md,
        "",
        samecat_md,
        "",
        paired_md,
        "",
        f"**Chance.** {CHANCE_METHOD}",
        "",
        "## Runs",
        "",
        runs_md,
        "",
        "Wall time = the run's own `wall_seconds` (caches, training, evaluation); in the multirun = from Hydra's launch "
        f"of the run to the next launch (or the end). Raw multirun output: `{info['log']}`.",
        "",
    ])


def doc_markdown(info: dict[str, Any], main_md: str, samecat_md: str, runs_md: str, paired_md: str = "") -> str:
    """A docs/synthetic_results.md-style page; the reading is written by hand."""
    sizes = info["test_split"]
    preset = info["preset"]
    chance = info["chance"]
    names = ", ".join(info["variants"])
    budget = _budget_text(info["training"])

    def ch(key: str) -> str:
        return _fmt_chance(chance.get(key))

    def demote(md: str) -> str:  # the tables' "# title" -> "### title" under the page's title
        return "###" + md[1:] if md.startswith("# ") else md

    return "\n".join([
        f"# Synthetic world: {names} ({len(info['seeds'])} seeds)",
        "",
        f"Measured {info['started'][:10]} on a {info['host']['cpus']}-CPU machine (code {info['git'] or 'unknown'}) with",
        "",
        "```bash",
        info["command_line"],
        "```",
        "",
        f"which runs one Hydra multirun (`{info['multirun_command_line']}`) and merges it with `scripts/compare.py`. "
        f"Preset `{preset['name']}`{budget}"
        + (f", extra overrides `{' '.join(info['overrides']['extra'])}`" if info["overrides"]["extra"] else "")
        + f". Test split: {sizes.get('categories', '?')} categories, {sizes.get('gallery_shapes', '?')} shapes, "
        f"{sizes.get('photo_shape_pairs', '?')} photo–shape pairs. Total wall time {_duration(info['total_wall_seconds'])} "
        f"(≈ {info['mean_run_seconds']} s per run). Chance: zero-shot {ch('zeroshot/top1')}, paper-protocol top-1 "
        f"{ch('retrieval/nobg/paper/i2s_top1')}, gallery R@1 {ch('retrieval/nobg/gallery/i2s_r1')}, same-category "
        f"R@1 {ch('retrieval/nobg/gallery_samecat/i2s_r1')}.",
        "",
        "**Reading.** _To be written by hand._",
        "",
        demote(main_md),
        "",
        demote(samecat_md),
        "",
        demote(paired_md),
        "",
        f"**Chance.** {CHANCE_METHOD}",
        "",
        "### Runs",
        "",
        runs_md,
        "",
    ])


def write_text(path: Path, text: str) -> None:
    from captionless3d.utils.atomic import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))  # creates the parent directory


# ---------------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    own, overrides = split_argv(argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS), help="named budget (see PRESETS)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the tables (default: the multirun dir)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default: the preset's)")
    parser.add_argument("--variants", nargs="+", default=None, help="experiments (default: the preset's)")
    parser.add_argument("--benchmark", default="heldout", help="benchmark to tabulate (an eval=[...] entry)")
    parser.add_argument("--reference", default="baseline",
                        help="variant the paired comparison measures every other one against (default: baseline)")
    parser.add_argument("--write-doc", type=Path, default=None, help="also write a docs-style report to this new file")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo the multirun's whole output")
    args = parser.parse_args(own)
    return args, overrides


def main(argv: Sequence[str] | None = None) -> int:
    clock = Clock()
    started_at = datetime.now().astimezone()
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    preset = PRESETS[args.preset]
    variants = tuple(args.variants or preset.variants)
    seeds = tuple(args.seeds if args.seeds is not None else preset.seeds)
    try:
        for override in extra:
            if _override_key(override) in ("experiment", "seed"):
                raise UsageError(f"{override!r}: choose experiments and seeds with --variants / --seeds, not overrides")
        if len(set(seeds)) != len(seeds) or len(set(variants)) != len(variants):
            raise UsageError(f"--seeds {list(seeds)} / --variants {list(variants)}: each value once")
        if args.write_doc is not None and args.write_doc.exists():
            raise UsageError(f"--write-doc {args.write_doc}: the file exists (it holds a hand-written reading and is "
                             "never overwritten); remove it or choose another path")
        overrides = merge_overrides(preset.overrides(), extra)
        n_jobs = len(variants) * len(seeds)
        clock.say(f"preset {args.preset}: {len(variants)} variant(s) × {len(seeds)} seed(s) = {n_jobs} runs; estimate "
                  f"≈ {preset.estimate_min:g} min with warm caches (budget {preset.budget_min:g} min)")
        clock.say("stage 1/3: checking the training config")
        sweep_dir = check_config(variants, seeds[0], overrides)
        if sweep_dir.exists() and any(sweep_dir.iterdir()):
            raise UsageError(f"the multirun directory {sweep_dir} exists and is not empty; choose another "
                             "(hydra.sweep.dir=...)")
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    command = [sys.executable, "-m", "captionless3d.train", "-m", f"experiment={','.join(variants)}",
               f"seed={','.join(str(s) for s in seeds)}", *overrides, f"hydra.sweep.dir={_hydra_quote(str(sweep_dir))}"]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    log_path = sweep_dir / "reproduce.log"
    clock.say(f"stage 2/3: training {n_jobs} runs in one Hydra multirun -> {sweep_dir}")
    clock.say(f"  {shlex.join(command[2:])}")
    result = run_multirun(command, log_path, n_jobs, clock, args.verbose)
    runs = find_runs(sweep_dir)
    if result.interrupted:
        print(f"interrupted after {_duration(clock.elapsed())}; the runs so far are in {sweep_dir} "
              f"(multirun output: {log_path})", file=sys.stderr)
        return 130
    if result.returncode != 0 or len(runs) != n_jobs or not all(r.finished(args.benchmark) for r in runs):
        print(failure_report(runs, result, n_jobs, args.benchmark, log_path), file=sys.stderr)
        return 1
    clock.say(f"  all {n_jobs} runs finished in {_duration(result.seconds)}")

    clock.say("stage 3/3: merging the runs into the tables")
    from compare import (collect_runs, comparison_table, find_summaries, paired_report, paired_title,
                         params_of_runs, samecat_table, save_paired, with_oracle)

    from captionless3d.evaluation.paired import paired_markdown, paired_to_dict

    from captionless3d.errors import Captionless3DError

    out = (args.out or sweep_dir).resolve()
    try:
        summaries = find_summaries([sweep_dir])
        groups = collect_runs([sweep_dir], args.benchmark, summaries)
        params_m = params_of_runs(summaries, args.benchmark)
        keys = sorted({k for metrics in groups.values() for m in metrics for k in m})
        chance, sizes = run_chance(runs, args.benchmark, keys)
        paired = paired_report(summaries, args.benchmark, args.reference) if args.reference in groups else None
        groups = with_oracle(groups, summaries, args.benchmark)
        main_table = comparison_table(groups, args.benchmark, params_m=params_m)
        main_table.protocol += " " + _chance_note(main_table, chance)
        same_table = samecat_table(groups, args.benchmark, params_m=params_m)
        same_table.protocol += " " + _chance_note(same_table, chance)
        main_table.save(out)
        same_table.save(out / "samecat")
        if paired is not None:
            save_paired(paired, out, args.benchmark)
    except Captionless3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    main_md = markdown_with_chance(main_table, chance)
    same_md = markdown_with_chance(same_table, chance)
    paired_md = (paired_markdown(paired, title=paired_title(args.benchmark, args.reference)) if paired is not None
                 else f"(no paired comparison: the reference variant {args.reference!r} was not trained)")
    rows = per_run_rows(runs, result)
    walls = [r["wall_seconds"] for r in rows if isinstance(r["wall_seconds"], (int, float))]
    info: dict[str, Any] = {
        "preset": {"name": args.preset, **asdict(preset)},
        "variants": list(variants),
        "seeds": list(seeds),
        "benchmark": args.benchmark,
        "overrides": {"preset": preset.overrides(), "extra": list(extra), "effective": overrides},
        "command_line": shlex.join(["python", "scripts/reproduce_table.py",
                                    *(sys.argv[1:] if argv is None else list(argv))]),
        "multirun_command_line": shlex.join(["python", *command[1:]]),
        "sweep_dir": str(sweep_dir),
        "out": str(out),
        "log": str(log_path),
        "started": started_at.isoformat(timespec="seconds"),
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        "total_wall_seconds": round(clock.elapsed(), 1),
        "training_wall_seconds": round(result.seconds, 1),
        "mean_run_seconds": round(sum(walls) / len(walls), 1) if walls else None,
        "training": training_budget(runs),
        "runs": rows,
        "test_split": sizes,
        "chance": chance,
        "chance_method": CHANCE_METHOD,
        "teacher_ids": sorted({str(r.summary.get("teacher_id")) for r in runs if r.summary and r.summary.get("teacher_id")}),
        "git": _git_commit(),
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "tables": {"main": json.loads(main_table.to_json()), "samecat": json.loads(same_table.to_json())},
        "paired": paired_to_dict(paired) if paired is not None else None,
    }
    runs_md = runs_markdown(rows)
    write_text(out / "reproduce.md", report_markdown(info, main_md, same_md, runs_md, paired_md))
    write_text(out / "reproduce.json", json.dumps(info, indent=2, allow_nan=True))
    write_text(out / "runs.csv", runs_csv(rows))
    written = [out / "results.md", out / "samecat" / "results.md", out / "reproduce.md", out / "reproduce.json",
               out / "runs.csv"]
    if args.write_doc is not None:
        write_text(args.write_doc, doc_markdown(info, main_md, same_md, runs_md, paired_md))
        written.append(args.write_doc)

    print()
    print(main_md)
    print()
    print(same_md)
    print()
    print(paired_md)
    print()
    print(runs_md)
    print()
    clock.say(f"done: total wall time {_duration(info['total_wall_seconds'])} (budget {preset.budget_min:g} min for "
              f"preset {args.preset}), mean {info['mean_run_seconds']} s per run")
    for path in written:
        print(f"  wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
