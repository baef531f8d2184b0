"""scripts/reproduce_table.py end to end: the real multirun of python -m captionless3d.train on the tiny world,
and resuming a sweep in the same --out."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_table.py"
# the tiny world, a seconds-long teacher, 1 epoch of 2 batches (fast_dev), few points: a run takes seconds
TINY = ["data=synthetic_tiny", "teacher=synthetic_tiny", "trainer=fast_dev", "trainer.max_epochs=1",
        "data.loader.n_points=128", "data.loader.batch_size=8"]


def _run(args: list[str], root: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    # never the repository's outputs/ or .cache/: every path below the test's tmp dir
    paths = [f"paths.cache_dir={root.parent / 'cache'}", f"paths.output_dir={root / 'outputs'}"]
    cmd = [sys.executable, str(SCRIPT), *args, *TINY, *paths]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reproduce")


@pytest.fixture(scope="module")
def reproduced(workdir) -> tuple[subprocess.CompletedProcess, Path, Path]:
    root = workdir / "ok"
    root.mkdir()
    doc = root / "doc.md"
    proc = _run(["--preset", "quick", "--variants", "baseline", "avg", "--seeds", "0", "1", "--write-doc", str(doc)],
                root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (sweep,) = (root / "outputs" / "train" / "multiruns").iterdir()
    return proc, sweep, doc


def test_table_has_both_variants_mean_std_and_chance(reproduced):
    proc, sweep, _ = reproduced
    main = (sweep / "results.md").read_text()
    for name in ("| baseline |", "| avg |"):
        assert name in main and name in proc.stdout
    assert "±" in main and "runs per model: baseline: 2, avg: 2" in main
    table = json.loads((sweep / "results.json").read_text())
    rows = {row["name"]: row for row in table["rows"]}
    assert set(rows) == {"baseline", "avg", "teacher-oracle"}
    assert all(row["n_runs"] == 2 for name, row in rows.items() if name != "teacher-oracle")
    assert "zeroshot/top1" in rows["avg"]["std"]
    # the oracle is a reference row (one teacher: one entry), and every variant carries its efficiency
    assert rows["teacher-oracle"]["reference"] and rows["teacher-oracle"]["n_runs"] == 1
    assert "efficiency/zeroshot_top1" in rows["baseline"]["metrics"]
    # the paired comparison against the baseline, seed by seed
    paired = json.loads((sweep / "paired.json").read_text())
    assert (paired["reference"] == "baseline"
            and "paired differences vs baseline" in (sweep / "reproduce.md").read_text())
    # tiny world: 4 categories, 3 test shapes each, 2 photos per shape -> honest chance levels
    report = json.loads((sweep / "reproduce.json").read_text())
    chance = report["chance"]
    assert report["test_split"] == {"categories": 4, "gallery_shapes": 12, "photo_shape_pairs": 24}
    assert chance["zeroshot/top1"] == pytest.approx(25.0)
    assert chance["retrieval/nobg/paper/i2s_top1"] == pytest.approx(100 / 24)
    assert chance["retrieval/nobg/gallery/i2s_r1"] == pytest.approx(100 / 12)
    assert chance["retrieval/nobg/gallery_samecat/i2s_r1"] == pytest.approx(100 / 3)
    assert chance["retrieval/nobg/gallery_samecat/i2s_map"] == pytest.approx(100 * (1 + 1 / 2 + 1 / 3) / 3)
    assert "| chance |" in proc.stdout and "| chance |" in (sweep / "reproduce.md").read_text()
    assert "Chance levels of this test split" in table["protocol"]


def test_same_category_table(reproduced):
    proc, sweep, _ = reproduced
    same = json.loads((sweep / "samecat" / "results.json").read_text())
    assert {row["name"] for row in same["rows"]} == {"baseline", "avg", "teacher-oracle"}
    for row in same["rows"]:
        if row["reference"]:
            continue
        assert row["metrics"] and all("/gallery_samecat/" in key for key in row["metrics"])
        assert "retrieval/bg/gallery_samecat/i2s_r1" in row["std"]
    md = (sweep / "samecat" / "results.md").read_text()
    assert "same-cat w/o bg I→S" in md and "±" in md
    assert "same-category gallery retrieval" in proc.stdout
    with open(sweep / "samecat" / "results.csv", newline="") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["baseline", "avg", "teacher-oracle"]


def test_report_records_preset_overrides_and_times(reproduced):
    proc, sweep, doc = reproduced
    report = json.loads((sweep / "reproduce.json").read_text())
    assert report["preset"]["name"] == "quick" and report["seeds"] == [0, 1]
    assert report["variants"] == ["baseline", "avg"]
    # the user's overrides win over the preset's: one epoch at 128 points, not the preset's 8 at 256
    assert "trainer.max_epochs=1" in report["overrides"]["effective"]
    assert "trainer.max_epochs=8" not in report["overrides"]["effective"]
    assert report["training"]["max_epochs"] == 1 and report["training"]["n_points"] == 128
    assert report["total_wall_seconds"] > 0 and report["training_wall_seconds"] > 0
    runs = report["runs"]
    assert len(runs) == 4 and {(r["experiment"], r["seed"]) for r in runs} == {
        ("baseline", 0), ("baseline", 1), ("avg", 0), ("avg", 1)}
    assert all(r["wall_seconds"] > 0 and r["multirun_seconds"] > 0 for r in runs)
    with open(sweep / "runs.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert "stage 2/3" in proc.stdout and "run 4/4" in proc.stdout and "total wall time" in proc.stdout
    assert (sweep / "reproduce.log").is_file()
    assert "This run departs from the preset" in (sweep / "reproduce.md").read_text()  # seeds and epochs overridden
    text = doc.read_text()
    assert "**Reading.**" in text and "| avg |" in text and "| chance |" in text and "--preset quick" in text


def test_bad_override_is_a_clear_error(workdir):
    root = workdir / "bad"
    root.mkdir()
    proc = _run(["--preset", "quick", "trainer.max_epoch=1"], root, timeout=120)
    assert proc.returncode == 2
    assert "trainer.max_epoch" in proc.stderr and "bad override" in proc.stderr and "Traceback" not in proc.stderr
    assert not (root / "outputs").exists()  # nothing was trained


def test_failing_run_names_its_run_dir_and_log(reproduced, workdir):
    root = workdir / "failing"  # after the fixture: the tiny world and teacher caches are warm
    root.mkdir()
    proc = _run(["--preset", "quick", "--variants", "baseline", "avg", "eval.heldout.runner.protocols=[zeroshot,nope]"],
                root)
    assert proc.returncode == 1, proc.stderr[-3000:]
    (sweep,) = (root / "outputs" / "train" / "multiruns").iterdir()
    assert f"run dir: {sweep / 'baseline_seed0'}" in proc.stderr
    assert f"log:     {sweep / 'baseline_seed0' / 'train.log'}" in proc.stderr
    assert "unknown evaluation protocols" in proc.stderr and "not started" in proc.stderr
    assert "Traceback" not in proc.stderr and not (sweep / "results.md").exists()


def test_rerun_with_the_same_out_reuses_finished_runs_and_trains_only_missing_ones(reproduced, workdir):
    proc, sweep, _ = reproduced
    root = sweep.parents[3]  # <root>/outputs/train/multiruns/<time>
    args = ["--preset", "quick", "--variants", "baseline", "avg", "--seeds", "0", "1", "--out", str(sweep)]
    summaries = {p: p.stat().st_mtime_ns for p in sweep.glob("*_seed*/summary.json")}
    assert len(summaries) == 4
    again = _run(args, root)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "4 of 4 runs finished before" in again.stdout and "nothing to train" in again.stdout
    assert "run 1/" not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in sweep.glob("*_seed*/summary.json")} == summaries  # nothing retrained
    report = json.loads((sweep / "reproduce.json").read_text())
    assert report["reused_runs"] == 4 and len(report["runs"]) == 4

    # one run did not finish (no summary): only it trains again, in its own directory; the rest is reused
    (sweep / "baseline_seed1" / "summary.json").unlink()
    resumed = _run(args, root)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "3 of 4 runs finished before" in resumed.stdout and "run 1/1: experiment=baseline seed=1" in resumed.stdout
    assert "run 2/" not in resumed.stdout
    assert len(list(sweep.glob("baseline_seed1.incomplete-*"))) == 1  # set aside, not deleted
    assert (sweep / "baseline_seed1" / "summary.json").is_file()
    kept = {p: t for p, t in summaries.items() if p.parent.name != "baseline_seed1"}
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    table = json.loads((sweep / "results.json").read_text())
    assert {r["name"]: r["n_runs"] for r in table["rows"] if not r["reference"]} == {"baseline": 2, "avg": 2}
    report = json.loads((sweep / "reproduce.json").read_text())
    assert report["reused_runs"] == 3 and len(report["multirun_command_lines"]) == 1

    # other overrides in the same --out: refused before anything trains
    refused = _run([*args, "data.loader.batch_size=4"], root, timeout=120)
    assert refused.returncode == 2 and "trained with overrides" in refused.stderr and "Traceback" not in refused.stderr
