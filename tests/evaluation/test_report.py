"""ResultsTable layout, key helpers, mean ± std merging, atomic save."""
from __future__ import annotations

import csv
import io
import json

import pytest
import torch

from captionless3d.errors import DataError
from captionless3d.evaluation import (
    ResultsTable,
    full_gallery_retrieval,
    gallery_keys,
    mean_std_table,
    paper_batch_retrieval,
    paper_keys,
    zero_shot_metrics,
    zeroshot_keys,
)

PAPER_AVG = {  # Ours-AVG row of the paper's retrieval table (its official README)
    "retrieval/nobg/paper/i2s_top1": 35.6,
    "retrieval/nobg/paper/i2s_top5": 75.1,
    "retrieval/nobg/paper/s2i_top1": 29.0,
    "retrieval/nobg/paper/s2i_top5": 68.7,
    "retrieval/bg/paper/i2s_top1": 25.9,
    "retrieval/bg/paper/i2s_top5": 60.1,
    "retrieval/bg/paper/s2i_top1": 23.3,
    "retrieval/bg/paper/s2i_top5": 57.8,
}


def test_key_helpers_follow_convention():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 6, generator=g)
    zs = zeroshot_keys(zero_shot_metrics(x, torch.randn(6, 6, generator=g), torch.arange(12) % 6))
    assert set(zs) == {"zeroshot/top1", "zeroshot/top5", "zeroshot/class_mean_top1"}
    assert set(zeroshot_keys({"top1": 1.0}, prefix="zeroshot_64tpl")) == {"zeroshot_64tpl/top1"}
    pk = paper_keys(paper_batch_retrieval(x, x, batch_size=5, categories=["a"] * 12), "nobg")
    assert set(pk) == {f"retrieval/nobg/paper/{d}_top{k}" for d in ("i2s", "s2i") for k in (1, 5)}
    ids = list(range(12))
    gk = gallery_keys(full_gallery_retrieval(x, ids, x, ids, categories=["a", "b"] * 6), "bg")
    expected = {f"retrieval/bg/{p}/{d}_{m}" for p in ("gallery", "gallery_samecat") for d in ("i2s", "s2i")
                for m in ("r1", "r5", "r10", "map")}
    assert set(gk) == expected
    assert all(isinstance(v, float) for v in gk.values())
    with pytest.raises(DataError, match="background"):
        paper_keys({}, "with")


def test_markdown_layout_like_paper():
    t = ResultsTable(title="Pix3D retrieval")
    t.add("ReCon", {k: v - 4 for k, v in PAPER_AVG.items()}, params_m=43.6, notes="numbers from the paper")
    t.add("Ours-AVG", {**PAPER_AVG, "zeroshot/top1": 55.0, "retrieval/nobg/gallery/i2s_map": 40.31}, params_m=1.4)
    md = t.to_markdown()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| Model"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:10] == [
        "Model", "#Params (M)",
        "w/o bg I→S Top-1", "w/o bg I→S Top-5", "w/o bg S→I Top-1", "w/o bg S→I Top-5",
        "w/ bg I→S Top-1", "w/ bg I→S Top-5", "w/ bg S→I Top-1", "w/ bg S→I Top-5",
    ]
    assert "zero-shot Top-1" in cols and "gallery w/o bg I→S mAP" in cols
    assert "zero-shot Top-5" not in cols  # columns without any value are left out
    ours = next(line for line in lines if line.startswith("| Ours-AVG"))
    assert "| 1.4 | **35.6** | **75.1** |" in ours and "| 40.3 |" in ours  # only one value in that column: not bold
    recon = next(line for line in lines if line.startswith("| ReCon"))
    assert "| 43.6 | 31.6 |" in recon and "| – |" in recon  # missing metrics shown as a dash
    assert "**Protocol.**" in md and "batches of 128" in md and "validation split" in md
    assert "- ReCon: numbers from the paper" in md


def test_csv_json_roundtrip_and_save(tmp_path):
    t = ResultsTable()
    t.add("Ours-I2I", PAPER_AVG, params_m=1.4, notes="seed 0")
    t.add("PointCLIP", {"retrieval/nobg/paper/i2s_top1": 13.6, "extra/metric": 1.5}, params_m=0)
    rows = list(csv.DictReader(io.StringIO(t.to_csv())))
    assert [r["model"] for r in rows] == ["Ours-I2I", "PointCLIP"]
    assert float(rows[0]["retrieval/bg/paper/s2i_top5"]) == 57.8
    assert rows[1]["retrieval/bg/paper/s2i_top5"] == "" and float(rows[1]["extra/metric"]) == 1.5
    assert all("batches of 128" in r["protocol"] for r in rows)
    obj = json.loads(t.to_json())
    assert "batches of 128" in obj["protocol"] and obj["rows"][0]["metrics"] == PAPER_AVG
    back = ResultsTable.from_json(t.to_json())
    assert back.to_markdown() == t.to_markdown()
    paths = t.save(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.csv", "results.json", "results.md"]
    for p in paths.values():
        assert "validation split" in p.read_text(encoding="utf-8")


def test_mean_std_table():
    runs = {
        "Ours-AVG": [{"zeroshot/top1": 50.0, "zeroshot/top5": 80.0}, {"zeroshot/top1": 52.0, "zeroshot/top5": 82.0},
                     {"zeroshot/top1": 54.0, "zeroshot/top5": 84.0}],
        "ULIP": [{"zeroshot/top1": 56.2, "zeroshot/top5": 77.0}],
    }
    t = mean_std_table(runs, params_m={"Ours-AVG": 1.4})
    avg = t.rows[0]
    assert avg.metrics["zeroshot/top1"] == pytest.approx(52.0) and avg.std["zeroshot/top1"] == pytest.approx(2.0)
    assert avg.n_runs == 3 and t.rows[1].std == {}
    md = t.to_markdown()
    assert "| 52.0 ± 2.0 |" in md and "| **56.2** |" in md and "Ours-AVG: 3" in md
    rows = list(csv.DictReader(io.StringIO(t.to_csv())))
    assert float(rows[0]["zeroshot/top1_std"]) == pytest.approx(2.0) and rows[1]["zeroshot/top1_std"] == ""
    # flat list form with a "model" key
    flat = [{"model": "A", "params_m": 1.4, "x/y": 1.0}, {"model": "A", "x/y": 3.0}, {"model": "B", "x/y": 2.0}]
    t2 = mean_std_table(flat)
    assert t2.rows[0].metrics["x/y"] == 2.0 and t2.rows[0].params_m == 1.4 and t2.rows[1].n_runs == 1
    with pytest.raises(DataError, match="different metric keys"):
        mean_std_table({"A": [{"a": 1.0}, {"b": 1.0}]})
    with pytest.raises(DataError, match="'model'"):
        mean_std_table([{"a": 1.0}])


def test_table_bad_rows():
    t = ResultsTable()
    t.add("A", {"zeroshot/top1": 1.0})
    with pytest.raises(DataError, match="duplicate"):
        t.add("A", {})
    with pytest.raises(DataError, match="not a number"):
        t.add("B", {"zeroshot/top1": "high"})  # type: ignore[dict-item]
    with pytest.raises(DataError, match="protocol"):
        ResultsTable(protocol="  ")
