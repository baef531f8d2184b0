"""Reproduce the synthetic-world comparison table: a preset's variants × seeds trained through the real entry point
(:mod:`captionless3d.sweep`, resumable), then merged into the paper-style table, the same-category breakdown and
the paired comparison against a reference variant (:mod:`captionless3d.evaluation.compare`), with the chance levels
the runs recorded, and written as ``results.*``, ``samecat/results.*``, ``paired.*``, ``reproduce.{md,json}`` and
``runs.csv``.

Presets are Hydra configs, ``configs/reproduce/<name>.yaml`` (``+reproduce=<name>``): the training budget, the
``hydra.sweeper.params`` sweep (variants × seeds) and a ``reproduce`` node with the description and the expected wall
time. ``scripts/reproduce_table.py`` is the command line over :func:`reproduce`.
"""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from captionless3d.errors import Captionless3DError, ConfigError
from captionless3d.sweep import (
    Clock,
    LaunchResult,
    Run,
    compose_check,
    duration,
    failure_report,
    find_runs,
    launch_sweep,
    plan_sweep,
    set_aside,
)

__all__ = ["Preset", "available_presets", "load_preset", "reproduce"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class Preset:
    """A reproduce preset as ``configs/reproduce/<name>.yaml`` defines it."""

    name: str
    description: str
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    estimate_min: float
    budget_min: float
    settings: tuple[str, ...]  # what the preset sets, as ``key=value`` lines (for the report)

    @property
    def override(self) -> str:
        """The Hydra override that selects the preset in a training run."""
        return f"+reproduce={self.name}"


def _preset_dir() -> Path:
    from captionless3d.hydra_utils import CONFIG_DIR

    return Path(CONFIG_DIR) / "reproduce"


def available_presets() -> list[str]:
    """Names of the presets (``configs/reproduce/*.yaml`` with a sweep)."""
    return sorted(p.stem for p in _preset_dir().glob("*.yaml") if p.stem != "budget")


def _split(value: Any) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def load_preset(name: str) -> Preset:
    """The preset ``name``, composed as a training run would see it; :class:`ConfigError` naming the file and the
    available presets when it is missing or has no ``hydra.sweeper.params`` sweep."""
    from omegaconf import OmegaConf

    names = available_presets()
    if name not in names:
        raise ConfigError(f"--preset {name}: no configs/reproduce/{name}.yaml; available presets: {', '.join(names)}")
    cfg = compose_check(["baseline"], 0, [f"+reproduce={name}"])
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    meta = cfg.get("reproduce") or {}
    if "experiment" not in params or "seed" not in params:
        raise ConfigError(f"configs/reproduce/{name}.yaml: hydra.sweeper.params needs 'experiment' and 'seed' lists")
    raw = OmegaConf.to_container(OmegaConf.load(_preset_dir() / "budget.yaml"))
    settings = tuple(f"{k}={v}" for k, v in _flatten(raw).items() if not k.startswith("hydra."))
    return Preset(name=name, description=str(meta.get("description", "")), variants=tuple(_split(params.experiment)),
                  seeds=tuple(int(s) for s in _split(params.seed)), estimate_min=float(meta.get("estimate_min", 0)),
                  budget_min=float(meta.get("budget_min", 0)), settings=settings)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _git_commit(repo: Path) -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "")


# ----------------------------------------------------------------------------------------------------------- rows
def _select(config: Any, key: str) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(config, key, default=None)
    except Exception:
        return None


def training_budget(runs: Sequence[Run]) -> dict[str, Any]:
    """What every run actually trained with (after the overrides), from the first run's saved config."""
    config = runs[0].config if runs else None
    keys = {"max_epochs": "trainer.max_epochs", "n_points": "data.loader.n_points",
            "batch_size": "data.loader.batch_size",
            "limit_train_batches": "trainer.limit_train_batches", "data": "data.name"}
    return {name: _select(config, key) for name, key in keys.items() if _select(config, key) is not None}


def run_rows(runs: Sequence[Run], launched: LaunchResult) -> list[dict[str, Any]]:
    """One row per run: its wall time (from its summary) and, for a run trained now, its time in the multirun."""
    rows = []
    for number, run in enumerate(runs):
        summary = run.summary or {}
        rows.append({
            "job": number,
            "experiment": run.experiment,
            "seed": run.seed,
            "run_dir": str(run.run_dir),
            "log": str(run.log),
            "wall_seconds": summary.get("wall_seconds"),
            "multirun_seconds": launched.run_seconds.get((run.experiment, run.seed)),
            "peak_rss_mb": summary.get("peak_rss_mb"),
            "stage_seconds": summary.get("stage_seconds"),
        })
    return rows


def runs_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    fields = ["job", "experiment", "seed", "run_dir", "log", "wall_seconds", "multirun_seconds", "peak_rss_mb",
              "stage_seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "stage_seconds": json.dumps(row.get("stage_seconds") or {}, sort_keys=True)})
    return buf.getvalue()


def runs_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| run | experiment | seed | wall time (s) | in the multirun (s) | run dir |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['job']} | {row['experiment']} | {row['seed']} | {row['wall_seconds']} | "
                     f"{row['multirun_seconds'] if row['multirun_seconds'] is not None else 'reused'} | "
                     f"`{row['run_dir']}` |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- reports
def _budget_text(budget: Mapping[str, Any]) -> str:
    if not budget:
        return ""
    text = (f": {budget.get('max_epochs', '?')} epochs at {budget.get('n_points', '?')} points, batch "
            f"{budget.get('batch_size', '?')}")
    if budget.get("limit_train_batches") is not None:
        text += f", at most {budget['limit_train_batches']} train batches per epoch"
    return text + (f", data `{budget['data']}`" if budget.get("data") else "")


def _demote(md: str) -> str:
    """A table's ``# title`` as ``### title`` under a page's title."""
    return "###" + md[1:] if md.startswith("# ") else md


def report_markdown(info: Mapping[str, Any], main_md: str, samecat_md: str, runs_md: str, paired_md: str = "") -> str:
    preset = info["preset"]
    sizes = info["test_split"]
    return "\n".join([
        f"# Reproduced table: preset `{preset['name']}` "
        f"({len(info['variants'])} variants × {len(info['seeds'])} seeds)",
        "",
        f"Preset `{preset['name']}`: {preset['description']}."
        + (" **This run departs from the preset**: its variants, seeds and overrides are listed below."
           if info["departs"] else ""),
        "",
        f"- started {info['started']}, finished {info['finished']}; **total wall time "
        f"{duration(info['total_wall_seconds'])}** (training {duration(info['training_wall_seconds'])}; "
        f"{info['reused_runs']} finished run(s) reused; preset estimate ≈ {preset['estimate_min']:g} min with warm "
        f"caches, budget {preset['budget_min']:g} min); mean per run {info['mean_run_seconds']} s",
        f"- variants {list(info['variants'])}, seeds {list(info['seeds'])}, benchmark `{info['benchmark']}`; "
        f"trained with{_budget_text(info['training']) or ' (unknown budget)'}",
        f"- preset: `{preset['override']}` (`configs/reproduce/{preset['name']}.yaml`: "
        f"`{' '.join(preset['settings'])}`)",
        f"- extra overrides: `{' '.join(info['overrides']['extra']) or '(none)'}`",
        f"- test split: {sizes.get('categories', '?')} categories, {sizes.get('gallery_shapes', '?')} shapes, "
        f"{sizes.get('photo_shape_pairs', '?')} photo–shape pairs; teacher {', '.join(info['teacher_ids']) or '?'}",
        f"- code: {info['git'] or 'unknown'}; host: {info['host']['cpus']} CPUs, {info['host']['platform']}",
        "",
        "```bash",
        info["command_line"],
        *info["multirun_command_lines"],
        "```",
        "",
        main_md,
        "",
        samecat_md,
        "",
        paired_md,
        "",
        "## Runs",
        "",
        runs_md,
        "",
        "Wall time = the run's own `wall_seconds` (caches, training, evaluation); in the multirun = from Hydra's "
        "launch of the run to the next launch (or the end); `reused` = finished before. Raw multirun output: "
        f"`{info['log']}`.",
        "",
    ])


def doc_markdown(info: Mapping[str, Any], main_md: str, samecat_md: str, runs_md: str, paired_md: str = "") -> str:
    """A docs/synthetic_results.md-style page; the reading is written by hand."""
    from captionless3d.evaluation.report import format_chance

    sizes = info["test_split"]
    preset = info["preset"]
    chance = info["chance"]

    def ch(key: str) -> str:
        return format_chance(chance.get(key))

    return "\n".join([
        f"# Synthetic world: {', '.join(info['variants'])} ({len(info['seeds'])} seeds)",
        "",
        f"Measured {info['started'][:10]} on a {info['host']['cpus']}-CPU machine "
        f"(code {info['git'] or 'unknown'}) with",
        "",
        "```bash",
        info["command_line"],
        "```",
        "",
        "which trains through Hydra multiruns of the training entry point "
        f"(`{info['multirun_command_lines'][0] if info['multirun_command_lines'] else 'none: every run was reused'}`) "
        "and merges the runs (`captionless3d.evaluation.compare`). Preset "
        f"`{preset['name']}`{_budget_text(info['training'])}"
        + (f", extra overrides `{' '.join(info['overrides']['extra'])}`" if info["overrides"]["extra"] else "")
        + f". Test split: {sizes.get('categories', '?')} categories, {sizes.get('gallery_shapes', '?')} shapes, "
        f"{sizes.get('photo_shape_pairs', '?')} photo–shape pairs. Total wall time "
        f"{duration(info['total_wall_seconds'])} (≈ {info['mean_run_seconds']} s per run). Chance: zero-shot "
        f"{ch('zeroshot/top1')}, paper-protocol top-1 {ch('retrieval/nobg/paper/i2s_top1')}, gallery R@1 "
        f"{ch('retrieval/nobg/gallery/i2s_r1')}, same-category R@1 {ch('retrieval/nobg/gallery_samecat/i2s_r1')}.",
        "",
        "**Reading.** _To be written by hand._",
        "",
        _demote(main_md),
        "",
        _demote(samecat_md),
        "",
        _demote(paired_md),
        "",
        "### Runs",
        "",
        runs_md,
        "",
    ])


def _write_text(path: Path, text: str) -> None:
    from captionless3d.utils.atomic import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"))  # creates the parent directory


# ----------------------------------------------------------------------------------------------------------- main
def reproduce(
    preset_name: str,
    *,
    out: Path | None = None,
    variants: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    extra_overrides: Sequence[str] = (),
    benchmark: str = "heldout",
    reference: str = "baseline",
    write_doc: Path | None = None,
    verbose: bool = False,
    command_line: str = "",
    repo: Path | None = None,
) -> int:
    """Train the preset's missing (variant, seed) runs into ``out`` and write the tables there; returns the exit
    status (0 done; 1 a run failed, its run dir and log are named on stderr; 2 bad arguments or overrides, nothing
    trained; 130 interrupted).

    ``out`` (default: a new time-stamped multirun directory, ``hydra.sweep.dir``) holds one directory per run
    (``<variant>_seed<seed>``); a second call with the same ``out`` and overrides reuses the finished runs and trains
    only the missing ones. ``extra_overrides`` win over the preset's settings; variants and seeds are chosen with
    ``variants`` / ``seeds``, not with overrides.
    """
    clock = Clock()
    started_at = datetime.now().astimezone()
    try:
        preset = load_preset(preset_name)
        variants = tuple(variants or preset.variants)
        seeds = tuple(seeds if seeds is not None else preset.seeds)
        for override in extra_overrides:
            if override.split("=", 1)[0].lstrip("+~") in ("experiment", "seed"):
                raise ConfigError(f"{override!r}: choose experiments and seeds with --variants / --seeds, "
                                  "not overrides")
        if len(set(seeds)) != len(seeds) or len(set(variants)) != len(variants):
            raise ConfigError(f"--seeds {list(seeds)} / --variants {list(variants)}: each value once")
        if write_doc is not None and write_doc.exists():
            raise ConfigError(f"--write-doc {write_doc}: the file exists (it holds a hand-written reading and is "
                              "never overwritten); remove it or choose another path")
        overrides = [preset.override, *extra_overrides]
        wanted = [(v, int(s)) for v in variants for s in seeds]
        clock.say(f"preset {preset.name}: {len(variants)} variant(s) × {len(seeds)} seed(s) = {len(wanted)} runs; "
                  f"estimate ≈ {preset.estimate_min:g} min with warm caches (budget {preset.budget_min:g} min)")
        clock.say("stage 1/3: checking the training config")
        composed = compose_check(variants, seeds[0], overrides)
        from omegaconf import OmegaConf

        out = Path(out if out is not None
                   else str(OmegaConf.select(composed, "hydra.sweep.dir"))).expanduser().resolve()
        plan = plan_sweep(out, variants, seeds, overrides, benchmark)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    for run in plan.incomplete:
        clock.say(f"  unfinished run set aside: {set_aside(run)}")
    if plan.done:
        clock.say(f"  {len(plan.done)} of {len(wanted)} runs finished before in {out}: reused")
    launched = LaunchResult()
    log_path = out / "reproduce.log"
    if plan.missing:
        clock.say(f"stage 2/3: training {len(plan.missing)} run(s) -> {out}")
        launched = launch_sweep(out, plan.missing, overrides, clock, verbose=verbose)
        for command in launched.commands:
            clock.say(f"  {shlex.join(command[2:])}")
    else:
        clock.say("stage 2/3: nothing to train")
    found = {(r.experiment, r.seed): r for r in find_runs(out)}
    runs = [found[k] for k in wanted if k in found]
    if launched.interrupted:
        print(f"interrupted after {duration(clock.elapsed())}; the runs so far are in {out} "
              f"(multirun output: {log_path})", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not launched.ok or len(runs) != len(wanted) or not all(r.finished(benchmark) for r in runs):
        print(failure_report(list(found.values()), wanted, launched, benchmark, log_path), file=sys.stderr)
        return EXIT_FAILED
    clock.say(f"  all {len(wanted)} runs finished (training {duration(launched.seconds)})")

    clock.say("stage 3/3: merging the runs into the tables")
    from captionless3d.evaluation.compare import collect_runs, merge_runs, paired_report, paired_title, save_paired
    from captionless3d.evaluation.paired import paired_markdown, paired_to_dict

    summaries = [(run.run_dir / "summary.json", run.summary) for run in runs]
    try:
        groups = collect_runs([out], benchmark, summaries)
        merged = merge_runs(groups, summaries, benchmark)
        chance, sizes = merged.chance, merged.sizes
        paired = paired_report(summaries, benchmark, reference) if reference in groups else None
        main_table = merged.main_table()
        same_table = merged.samecat_table()
        main_table.save(out)
        same_table.save(out / "samecat")
        if paired is not None:
            save_paired(paired, out, benchmark)
    except Captionless3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    main_md = main_table.to_markdown()
    same_md = same_table.to_markdown()
    paired_md = (paired_markdown(paired, title=paired_title(benchmark, reference)) if paired is not None
                 else f"(no paired comparison: the reference variant {reference!r} was not trained)")
    rows = run_rows(runs, launched)
    walls = [r["wall_seconds"] for r in rows if isinstance(r["wall_seconds"], (int, float))]
    info: dict[str, Any] = {
        "preset": {**preset.__dict__, "override": preset.override},
        "departs": (list(variants) != list(preset.variants) or list(seeds) != list(preset.seeds)
                    or bool(extra_overrides)),
        "variants": list(variants),
        "seeds": list(seeds),
        "benchmark": benchmark,
        "overrides": {"preset": preset.override, "extra": list(extra_overrides), "effective": overrides},
        "command_line": command_line,
        "multirun_command_lines": [shlex.join(["python", *c[1:]]) for c in launched.commands],
        "sweep_dir": str(out),
        "out": str(out),
        "log": str(log_path),
        "started": started_at.isoformat(timespec="seconds"),
        "finished": datetime.now().astimezone().isoformat(timespec="seconds"),
        "total_wall_seconds": round(clock.elapsed(), 1),
        "training_wall_seconds": round(launched.seconds, 1),
        "reused_runs": len(plan.done),
        "mean_run_seconds": round(sum(walls) / len(walls), 1) if walls else None,
        "training": training_budget(runs),
        "runs": rows,
        "test_split": sizes,
        "chance": chance,
        "teacher_ids": sorted({str(r.summary.get("teacher_id"))
                               for r in runs if r.summary and r.summary.get("teacher_id")}),
        "git": _git_commit(repo) if repo is not None else None,
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "tables": {"main": json.loads(main_table.to_json()), "samecat": json.loads(same_table.to_json())},
        "paired": paired_to_dict(paired) if paired is not None else None,
    }
    runs_md = runs_markdown(rows)
    _write_text(out / "reproduce.md", report_markdown(info, main_md, same_md, runs_md, paired_md))
    _write_text(out / "reproduce.json", json.dumps(info, indent=2, allow_nan=True, default=str))
    _write_text(out / "runs.csv", runs_csv(rows))
    written = [out / "results.md", out / "samecat" / "results.md", out / "reproduce.md", out / "reproduce.json",
               out / "runs.csv"]
    if write_doc is not None:
        _write_text(write_doc, doc_markdown(info, main_md, same_md, runs_md, paired_md))
        written.append(write_doc)
    for section in (main_md, same_md, paired_md, runs_md):
        print()
        print(section)
    print()
    clock.say(f"done: total wall time {duration(info['total_wall_seconds'])} (budget {preset.budget_min:g} min for "
              f"preset {preset.name}), mean {info['mean_run_seconds']} s per run")
    for path in written:
        print(f"  wrote {path}")
    return EXIT_OK
