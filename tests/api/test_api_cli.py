"""The ``captionless3d`` command: classify / index / search / export tables, pass-through, error exit codes."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from api_world import rewrite_checkpoint

from captionless3d.cli import main


def _rows(text: str) -> list[tuple[int, float, str]]:
    return [(int(m[1]), float(m[2]), m[3]) for m in re.finditer(r"^\s*(\d+)\s+(-?\d+\.\d{4})\s+(\S+)\s*$", text, re.M)]


def test_classify_prints_a_ranked_table(world, shapes, model, capsys):
    files = [str(shapes.dir / p) for p in shapes.paths[:2]]
    labels = list(world.collection.categories)
    assert main(["classify", *files, "--ckpt", str(world.ckpt), "--labels", *labels, "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert files[0] in out and files[1] in out and "rank" in out and "label" in out
    rows = _rows(out)
    assert len(rows) == 6 and [r[0] for r in rows] == [1, 2, 3, 1, 2, 3]
    expected = model.classify(files, labels=labels, top=3)
    assert [(label, round(score, 4)) for ranked in expected for label, score in ranked] == [(r[2], r[1]) for r in rows]


def test_index_then_search_by_text_points_and_image(world, shapes, tmp_path, capsys):
    from PIL import Image

    out_dir = tmp_path / "idx"
    assert main(["index", str(shapes.dir), "--ckpt", str(world.ckpt), "--out", str(out_dir), "--quiet"]) == 0
    assert "indexed 208 shapes" in capsys.readouterr().out
    query = shapes.dir / shapes.paths[5]
    assert main(["search", "--points", str(query), "--index", str(out_dir), "-k", "3"]) == 0  # ckpt from the index
    rows = _rows(capsys.readouterr().out)
    assert len(rows) == 3 and rows[0][2] == shapes.paths[5] and rows[0][1] > 0.99
    assert main(["search", "--text", "a wooden table", "--index", str(out_dir), "--ckpt", str(world.ckpt)]) == 0
    assert len(_rows(capsys.readouterr().out)) == 5
    Image.fromarray(np.asarray(world.collection.photos[0, 0])).save(tmp_path / "q.png")
    assert main(["search", "--image", str(tmp_path / "q.png"), "--index", str(out_dir), "-k", "2"]) == 0
    assert len(_rows(capsys.readouterr().out)) == 2


def test_our_errors_exit_2_with_one_line(world, tmp_path, capsys):
    assert main(["classify", str(tmp_path / "none.ply"), "--ckpt", str(tmp_path / "no.ckpt"), "--labels", "a"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no.ckpt does not exist" in err and "Traceback" not in err
    bad = tmp_path / "bad.off"
    bad.write_text("")
    assert main(["classify", str(bad), "--ckpt", str(world.ckpt), "--labels", "chair", "mug"]) == 2
    assert "bad.off: unreadable mesh" in capsys.readouterr().err
    newer = rewrite_checkpoint(world.ckpt, tmp_path / "newer.ckpt", format_version=7)
    assert main(["export", "--ckpt", str(newer), "--format", "safetensors", "--out", str(tmp_path / "x")]) == 2
    assert "format version 7 is newer" in capsys.readouterr().err
    assert main(["search", "--text", "chair", "--index", str(tmp_path / "missing")]) == 2
    assert "missing does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: both --text and --image
        main(["search", "--text", "x", "--image", "y", "--index", "i"])
    assert exc.value.code == 2


@pytest.mark.slow
def test_console_script_and_hydra_passthrough(world, built_index, tmp_path):
    """The installed ``captionless3d`` script: exit status 2 and no traceback for our errors; ``train`` hands its
    arguments to the Hydra entry point (``--cfg job`` prints the composed config without running)."""
    script = Path(sys.executable).parent / "captionless3d"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "captionless3d.cli"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    bad = tmp_path / "photo.png"
    bad.write_text("not an image")
    proc = subprocess.run([*cmd, "search", "--image", str(bad), "--index", str(built_index.directory)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {bad}: not a readable image")
    proc = subprocess.run([*cmd, "train", "--cfg", "job", "data=synthetic_tiny", "experiment=i2i"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "experiment_name: i2i" in proc.stdout and "n_train: 8" in proc.stdout
