import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare.py"


def _summary(path: Path, experiment: str, top1: float) -> None:
    path.mkdir(parents=True)
    metrics = {"heldout": {"zeroshot/top1": top1, "retrieval/nobg/paper/i2s_top1": top1 / 2}}
    (path / "summary.json").write_text(json.dumps({"experiment": experiment, "metrics": metrics}))


def test_compare_merges_seeds_into_mean_std(tmp_path):
    for seed, value in enumerate([40.0, 50.0, 60.0]):
        _summary(tmp_path / f"{seed}_avg", "avg", value)
    _summary(tmp_path / "9_baseline", "baseline", 30.0)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "50.0 ± 10.0" in proc.stdout  # mean 50, sample std 10
    rows = json.loads((tmp_path / "results.json").read_text())
    assert "avg" in json.dumps(rows) and "baseline" in json.dumps(rows)


def test_compare_reports_missing_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True)
    assert proc.returncode == 2 and "no such run directory" in proc.stderr
