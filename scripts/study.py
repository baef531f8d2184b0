#!/usr/bin/env python
"""Run a study: named training configurations x seeds through the real entry point, then one table.

    python scripts/study.py SPEC.yaml [--out DIR] [--seeds 0 1] [--only NAME ...] [--dry-run] [--table-only]

``SPEC.yaml`` (examples in ``docs/studies/``)::

    description: the logit scale of the contrastive loss
    common: [experiment=baseline, data.collection.colours=per_image]   # every run
    seeds: [0]
    runs:
      paper: [loss=paper]                      # row name: overrides
      init_14: [loss.init_scale=14.29]

Each (run, seed) is ``python -m captionless3d.train <common> <overrides> seed=<s> experiment_name=<name>
hydra.run.dir=<out>/<name>/seed<s>``, one after the other (so timings are comparable), with its log next to it.
A (run, seed) whose ``summary.json`` exists is not trained again, so a killed study resumes where it stopped. The
table (``<out>/study.md`` and ``study.json``; rows mean ± std over seeds, plus the ``teacher-oracle`` reference row
from the runs' own summaries) shows test zero-shot and retrieval, distillation efficiency, the final validation
pass's val vs train_fit gallery R@1 (fit vs generalisation, captionless3d.evaluation.monitor), and wall time.
Exit status: 0 done; 1 a run failed (its log is named); 2 a bad spec.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]

#: (metric key, group, header) of the study table; ``monitor/...`` keys come from the last validation pass.
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("zeroshot/top1", "test zero-shot", "Top-1"),
    ("retrieval/nobg/gallery/i2s_r1", "test gallery w/o bg I→S", "R@1"),
    ("retrieval/nobg/gallery/i2s_r5", "test gallery w/o bg I→S", "R@5"),
    ("retrieval/bg/gallery/i2s_r1", "test gallery w/ bg I→S", "R@1"),
    ("retrieval/nobg/gallery_samecat/i2s_r1", "test same-cat w/o bg I→S", "R@1"),
    ("retrieval/nobg/paper/i2s_top1", "test paper w/o bg I→S", "Top-1"),
    ("efficiency/zeroshot_top1", "efficiency", "zero-shot"),
    ("efficiency/nobg/gallery_i2s_r1", "efficiency", "gallery w/o bg R@1"),
    ("monitor/val/gallery/i2s_r1", "last val pass", "val R@1"),
    ("monitor/train_fit/gallery/i2s_r1", "last val pass", "train-fit R@1"),
    ("monitor/val/zeroshot/top1", "last val pass", "val zero-shot"),
    ("monitor/train_fit/zeroshot/top1", "last val pass", "train-fit zero-shot"),
    ("wall_minutes", "cost", "wall min"),
)


class SpecError(Exception):
    pass


def load_spec(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(path.read_text("utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError(f"{path}: unreadable study spec ({exc})") from exc
    if not isinstance(spec, dict) or not isinstance(spec.get("runs"), dict) or not spec["runs"]:
        raise SpecError(f"{path}: a study spec needs a non-empty 'runs' mapping (name: [overrides])")
    for name, overrides in spec["runs"].items():
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise SpecError(f"{path}: runs.{name}: expected a list of override strings, got {overrides!r}")
        if "/" in str(name) or not str(name).strip():
            raise SpecError(f"{path}: runs: {name!r} is not a usable run name")
    common = spec.get("common", [])
    if not isinstance(common, list) or not all(isinstance(o, str) for o in common):
        raise SpecError(f"{path}: common: expected a list of override strings")
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SpecError(f"{path}: seeds: expected a list of integers")
    return {"description": str(spec.get("description", "")), "common": common, "seeds": seeds,
            "runs": {str(k): v for k, v in spec["runs"].items()}}


def run_command(spec: dict[str, Any], name: str, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "captionless3d.train", *spec["common"], *spec["runs"][name], f"seed={seed}",
            f"experiment_name={name}", f"hydra.run.dir={out / name / f'seed{seed}'}",
            "trainer.enable_progress_bar=false"]


def run_all(spec: dict[str, Any], out: Path, seeds: list[int], only: list[str] | None, dry_run: bool) -> int:
    names = [n for n in spec["runs"] if not only or n in only]
    for name in names:
        for seed in seeds:
            run_dir = out / name / f"seed{seed}"
            cmd = run_command(spec, name, seed, out)
            if (run_dir / "summary.json").is_file():
                print(f"[study] {name} seed {seed}: done before, kept", flush=True)
                continue
            print(f"[study] {name} seed {seed}: {' '.join(cmd[1:])}", flush=True)
            if dry_run:
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            log = run_dir / "train.log"
            started = time.perf_counter()
            with open(log, "w", encoding="utf-8") as handle:
                proc = subprocess.run(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if proc.returncode != 0:
                print(f"[study] {name} seed {seed} failed (exit {proc.returncode}); log: {log}", file=sys.stderr)
                return 1
            print(f"[study] {name} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    return 0


def run_metrics(summary: dict[str, Any], benchmark: str) -> dict[str, float]:
    """Test metrics + ``monitor/...`` of the last validation pass + ``wall_minutes`` of one run."""
    metrics = dict((summary.get("metrics") or {}).get(benchmark) or {})
    history = summary.get("validation_history") or []
    if history:
        prefix = ("val/", "train_fit/")
        for key, value in history[-1].items():
            if key.startswith(prefix) and f"/{benchmark}/" in key and "/oracle/" not in key:
                split, _, rest = key.partition(f"/{benchmark}/")
                metrics[f"monitor/{split}/{rest}"] = float(value)
    if "wall_seconds" in summary:
        metrics["wall_minutes"] = float(summary["wall_seconds"]) / 60.0
    return metrics


def study_table(spec: dict[str, Any], out: Path, benchmark: str = "heldout"):
    from captionless3d.evaluation.compare import find_summaries, params_of_runs
    from captionless3d.evaluation.oracle import ORACLE_NAME
    from captionless3d.evaluation.report import mean_std_table

    groups: dict[str, list[dict[str, float]]] = {}
    oracles: list[dict[str, float]] = []
    finished: list[tuple[Path, dict[str, Any]]] = []
    for path, summary in find_summaries([out]):
        name = str(summary.get("experiment"))
        if name not in spec["runs"] or not (summary.get("metrics") or {}).get(benchmark):
            continue
        finished.append((path, summary))
        groups.setdefault(name, []).append(run_metrics(summary, benchmark))
        oracle = (summary.get("oracle") or {}).get(benchmark)
        if oracle and oracle not in oracles:
            oracles.append(oracle)
    if not groups:
        raise SpecError(f"no finished runs of this study under {out}")
    ordered = {name: groups[name] for name in spec["runs"] if name in groups}
    for runs in ordered.values():  # a key missing from some seeds' runs would make mean_std_table refuse
        shared = set.intersection(*(set(r) for r in runs))
        for r in runs:
            for key in set(r) - shared:
                del r[key]
    if oracles:
        shared = set.intersection(*(set(o) for o in oracles))
        ordered[ORACLE_NAME] = [{k: o[k] for k in shared} for o in oracles]
    notes = {name: " ".join(spec["runs"][name]) or "(common only)" for name in spec["runs"]}
    protocol = (f"Study: {spec['description']} Common overrides: {' '.join(spec['common']) or '(none)'}. "
                "Test metrics on the held-out test split of the checkpoint selected on validation; 'last val pass': "
                "the final epoch's validation-split and fixed train-subset scalars (fit vs generalisation). "
                "teacher-oracle: the teacher's own mean render embedding per shape (one row per distinct teacher "
                "and world, merged).")
    return mean_std_table(ordered, columns=COLUMNS, protocol=protocol, notes=notes, references=[ORACLE_NAME],
                          params_m=params_of_runs(finished, benchmark),
                          title=f"study {out.name}: mean ± std over seeds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="default: outputs/study/<spec name>")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the spec's seeds")
    parser.add_argument("--only", nargs="+", default=None, help="run only these run names")
    parser.add_argument("--benchmark", default="heldout")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--table-only", action="store_true", help="train nothing; tabulate what is there")
    args = parser.parse_args(argv)
    from captionless3d.errors import Captionless3DError

    try:
        spec = load_spec(args.spec)
        out = (args.out or REPO / "outputs" / "study" / args.spec.stem).resolve()
        if not args.table_only:
            status = run_all(spec, out, args.seeds or spec["seeds"], args.only, args.dry_run)
            if status or args.dry_run:
                return status
        table = study_table(spec, out, args.benchmark)
    except (SpecError, Captionless3DError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    markdown = table.to_markdown()
    print(markdown)
    from captionless3d.utils.atomic import atomic_write_bytes

    atomic_write_bytes(out / "study.md", markdown.encode("utf-8"))
    atomic_write_bytes(out / "study.json", table.to_json().encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
