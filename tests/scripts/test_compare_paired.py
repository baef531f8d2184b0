"""scripts/compare.py paired comparison end to end, on tiny fake run directories (summary.json written here)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from captionless3d.errors import DataError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare.py"
ZS = "zeroshot/top1"
PAPER = "retrieval/nobg/paper/i2s_top1"
T_975_DF2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))  # Student t(0.975, df = 2) in closed form = 4.3027


@pytest.fixture(scope="module")
def compare():
    """scripts/compare.py as a module (under its own name, so no other ``compare`` is shadowed)."""
    spec = importlib.util.spec_from_file_location("compare_script_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_dir(root: Path, name: str, experiment: str, seed: int | None, zs: float, *, seed_in: str = "summary",
             benchmark: str = "heldout") -> Path:
    """One fake run: ``summary.json`` with heldout metrics; its seed in the summary, in .hydra/config.yaml or
    nowhere."""
    run = root / name
    run.mkdir(parents=True)
    summary = {"experiment": experiment, "metrics": {benchmark: {ZS: zs, PAPER: zs / 2}}}
    if seed is not None and seed_in == "summary":
        summary["seed"] = seed
    elif seed is not None and seed_in == "hydra":
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text(f"experiment_name: {experiment}\nseed: {seed}\ntrainer:\n  x: 1\n")
    (run / "summary.json").write_text(json.dumps(summary))
    return run / "summary.json"


def _sweep(root: Path) -> None:
    """baseline seeds 0, 1, 2; avg seeds 0, 1, 2 (+1, +2, +3 zero-shot points) and 3 (no baseline partner)."""
    for seed, value in enumerate([40.0, 50.0, 45.0]):
        _run_dir(root, f"{seed}_baseline", "baseline", seed, value)
    for seed, value in enumerate([41.0, 52.0, 48.0, 90.0]):
        # seeds 1 and 3 from an older run whose summary has no seed: read from .hydra/config.yaml
        _run_dir(root, f"{seed}_avg", "avg", seed, value, seed_in="hydra" if seed % 2 else "summary")


def test_script_writes_paired_table_and_json(tmp_path):
    _sweep(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "--out", str(out), "--paired-metrics", ZS],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # the existing mean ± std table first (avg over 4 seeds), then the paired table
    assert proc.stdout.index("mean ± std over seeds") < proc.stdout.index("paired differences vs baseline")
    # avg − baseline on seeds 0, 1, 2 = 1, 2, 3: mean 2, sample sd 1, half width 4.3027 / sqrt(3) = 2.48 -> [-0.5, +4.5]
    assert "| avg | +2.0 [-0.5, +4.5] 3/3 |" in proc.stdout
    assert "avg: seeds [3] have no baseline run" in proc.stdout
    md = (out / "paired.md").read_text()
    assert "| avg | +2.0 [-0.5, +4.5] 3/3 |" in md and "Student's t" in md
    payload = json.loads((out / "paired.json").read_text())
    assert payload["benchmark"] == "heldout" and payload["reference"] == "baseline"
    (row,) = payload["rows"]
    assert (row["variant"], row["metric"], row["seeds"], row["wins"], row["ties"], row["losses"]) == (
        "avg", ZS, [0, 1, 2], 3, 0, 0)
    assert row["mean_diff"] == pytest.approx(2.0)
    assert row["ci_low"] == pytest.approx(2.0 - T_975_DF2 / math.sqrt(3))
    assert row["ci_high"] == pytest.approx(2.0 + T_975_DF2 / math.sqrt(3))
    assert payload["variant_only_seeds"] == {"avg": [3]}
    assert (out / "results.md").is_file()  # the existing outputs are still written
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_default_metrics_and_other_reference(tmp_path, compare, capsys):
    _sweep(tmp_path)
    assert compare.main([str(tmp_path), "--reference", "avg"]) == 0
    stdout = capsys.readouterr().out
    # reversed: baseline − avg = −1, −2, −3 on zero-shot, halved on paper top-1; both default metrics present
    assert "| baseline | -2.0 [-4.5, +0.5] 0/3 | -1.0 [-2.2, +0.2] 0/3 |" in stdout
    payload = json.loads((tmp_path / "paired.json").read_text())
    assert payload["metrics"] == [ZS, PAPER]  # default headline keys that the runs report, in default order
    assert "retrieval/bg/gallery/i2s_r1" in payload["missing_metrics"]  # not invented


def test_lower_is_better_option_flips_wins(tmp_path, compare, capsys):
    _sweep(tmp_path)
    assert compare.main([str(tmp_path), "--paired-metrics", ZS, "--lower-is-better", "zeroshot/*"]) == 0
    assert "| avg | +2.0 [-0.5, +4.5] 0/3 |" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "paired.json").read_text())["rows"]
    assert (row["wins"], row["losses"], row["lower_is_better"]) == (0, 3, True)


def test_missing_reference_skips_paired_output_without_error(tmp_path, compare, capsys):
    for seed, value in enumerate([40.0, 50.0]):
        _run_dir(tmp_path, f"{seed}_avg", "avg", seed, value)
    assert compare.main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "paired comparison skipped: reference experiment 'baseline'" in captured.err
    assert "45.0 ± 7.1" in captured.out and "paired differences" not in captured.out
    assert (tmp_path / "results.md").is_file() and not (tmp_path / "paired.json").exists()


def test_duplicate_experiment_and_seed_is_an_error_naming_both_files(tmp_path, compare, capsys):
    first = _run_dir(tmp_path / "a", "0_baseline", "baseline", 0, 40.0)
    second = _run_dir(tmp_path / "b", "0_baseline", "baseline", 0, 41.0, seed_in="hydra")
    _run_dir(tmp_path / "a", "0_avg", "avg", 0, 42.0)
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "two runs of experiment 'baseline' with seed 0" in err and str(first) in err and str(second) in err
    assert not (tmp_path / "a" / "results.md").exists()  # fails before writing a table that double-counts a seed


def test_single_paired_seed_reports_undefined_interval(tmp_path, compare, capsys):
    _run_dir(tmp_path, "0_baseline", "baseline", 0, 40.0)
    _run_dir(tmp_path, "0_avg", "avg", 0, 43.0)
    _run_dir(tmp_path, "5_i2i", "i2i", 5, 60.0)  # no baseline seed 5: no paired row, a note
    assert compare.main([str(tmp_path), "--paired-metrics", ZS]) == 0
    stdout = capsys.readouterr().out
    assert "| avg | +3.0 [CI undefined, n=1] 1/1 |" in stdout
    assert "| i2i |" not in stdout.split("paired differences")[1] and "i2i: no seed in common with baseline" in stdout
    payload = json.loads((tmp_path / "paired.json").read_text())
    assert payload["rows"][0]["ci_low"] is None and payload["unpaired_variants"] == ["i2i"]


def test_seed_lookup(tmp_path, compare):
    summary = _run_dir(tmp_path, "run", "avg", None, 40.0)
    with pytest.raises(DataError, match=f"{summary}: no seed"):
        compare.seed_of(summary, json.loads(summary.read_text()))
    (summary.parent / ".hydra").mkdir()
    (summary.parent / ".hydra" / "config.yaml").write_text("seed: 7\n")
    assert compare.seed_of(summary, {}) == 7
    assert compare.seed_of(summary, {"seed": 3}) == 3  # the summary's own seed wins
    with pytest.raises(DataError, match="'seed' must be an integer"):
        compare.seed_of(summary, {"seed": "3"})


def test_runs_without_any_seed_keep_the_old_table_and_skip_pairing(tmp_path, compare, capsys):
    _run_dir(tmp_path, "0_baseline", "baseline", None, 40.0)
    _run_dir(tmp_path, "0_avg", "avg", None, 42.0)
    assert compare.main([str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "paired comparison skipped: 2 run(s) record no seed" in captured.err
    assert (tmp_path / "results.md").is_file() and not (tmp_path / "paired.md").exists()
    with pytest.raises(DataError, match="no seed"):
        compare.paired_report(compare.find_summaries([tmp_path]), "heldout", "baseline", [ZS])


def test_paired_report_for_other_scripts(tmp_path, compare):
    _sweep(tmp_path)
    summaries = compare.find_summaries([tmp_path])
    report = compare.paired_report(summaries, "heldout", "baseline", [ZS])
    assert report.stats[("avg", ZS)].mean_diff == pytest.approx(2.0)
    assert compare.paired_report(summaries, "heldout", "i2l2", [ZS]) is None  # absent reference: nothing to compare
    runs = compare.collect_seeded_runs(summaries, "heldout")
    assert sorted(runs) == ["avg", "baseline"] and sorted(runs["avg"]) == [0, 1, 2, 3]
