"""scripts/study.py: spec checking, the commands it would run, resuming, and the table from run summaries."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "study.py"

SPEC = """
description: toy study
common: [experiment=baseline, trainer.max_epochs=1]
seeds: [0, 1]
runs:
  paper: [loss=paper]
  init_14: [loss.init_scale=14.29]
"""


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120)


def _summary(run_dir: Path, name: str, seed: int, r1: float, fit: float) -> None:
    run_dir.mkdir(parents=True)
    summary = {
        "experiment": name, "seed": seed, "wall_seconds": 120.0,
        "metrics": {"heldout": {"zeroshot/top1": 40.0 + seed, "retrieval/nobg/gallery/i2s_r1": r1}},
        "oracle": {"heldout": {"zeroshot/top1": 60.0, "retrieval/nobg/gallery/i2s_r1": 8.0}},
        "validation_history": [{"epoch": 0, "val/heldout/gallery/i2s_r1": 1.0},
                               {"epoch": 1, "val/heldout/gallery/i2s_r1": r1, "train_fit/heldout/gallery/i2s_r1": fit,
                                "val/heldout/oracle/gallery/i2s_r1": 9.0}],
    }
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_dry_run_prints_one_command_per_run_and_seed_and_skips_finished(tmp_path):
    spec = tmp_path / "toy.yaml"
    spec.write_text(SPEC)
    _summary(tmp_path / "out" / "paper" / "seed0", "paper", 0, 2.0, 5.0)
    proc = _run(spec, "--out", tmp_path / "out", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[study]")]
    assert len(lines) == 4 and "paper seed 0: done before, kept" in lines[0]
    assert "loss.init_scale=14.29 seed=1 experiment_name=init_14" in lines[3]
    assert f"hydra.run.dir={tmp_path / 'out' / 'init_14' / 'seed1'}" in lines[3]


def test_table_merges_seeds_with_the_oracle_row_and_the_last_validation_pass(tmp_path):
    spec = tmp_path / "toy.yaml"
    spec.write_text(SPEC)
    for seed, (r1, fit) in enumerate([(2.0, 5.0), (4.0, 7.0)]):
        _summary(tmp_path / "out" / "init_14" / f"seed{seed}", "init_14", seed, r1, fit)
    results = tmp_path / "out" / "init_14" / "seed0" / "results" / "heldout" / "results.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps({"rows": [{"name": "init_14", "params_m": 1.4}]}))  # the run's own results table
    proc = _run(spec, "--out", tmp_path / "out", "--table-only")
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads((tmp_path / "out" / "study.json").read_text())["rows"]}
    assert set(rows) == {"init_14", "teacher-oracle"} and rows["teacher-oracle"]["reference"]
    row = rows["init_14"]
    assert row["metrics"]["retrieval/nobg/gallery/i2s_r1"] == 3.0 and abs(row["std"]["zeroshot/top1"] - 0.7071) < 1e-3
    assert row["metrics"]["monitor/train_fit/gallery/i2s_r1"] == 6.0 and row["metrics"]["wall_minutes"] == 2.0
    assert "monitor/val/oracle/gallery/i2s_r1" not in row["metrics"]
    assert "3.0 ± 1.4" in proc.stdout
    assert row["params_m"] == 1.4 and rows["teacher-oracle"]["params_m"] is None


def test_bad_spec_is_a_clear_error(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("runs: {a: loss=paper}\n")
    proc = _run(spec, "--dry-run")
    assert proc.returncode == 2 and "runs.a" in proc.stderr
