"""scripts/colour_oracle.py end to end on a tiny world: the oracle on coloured vs grey renders."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "colour_oracle.py"


def _run(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), "--no-progress", "--out", str(tmp_path / "out"), *args],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)


def test_colour_oracle_measures_coloured_and_grey(tmp_path):
    proc = _run(tmp_path, "data=synthetic_tiny", "teacher=synthetic_tiny", "data.collection.colours=per_image",
                f"paths.cache_dir={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "colour_oracle.json").read_text())
    assert result["colours"] == "per_image" and result["objects"] == 4 * 3
    for name in ("coloured", "grey"):
        for key in ("retrieval/nobg/gallery/i2s_r1", "retrieval/bg/gallery/i2s_r1", "zeroshot/top1"):
            assert 0.0 <= result[name][key] <= 100.0
    assert "| grey |" in proc.stdout and "| coloured |" in proc.stdout


def test_colour_oracle_rejects_a_bad_override(tmp_path):
    proc = _run(tmp_path, "data=no_such_world")
    assert proc.returncode == 2 and "bad override" in proc.stderr
