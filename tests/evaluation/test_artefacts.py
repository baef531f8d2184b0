"""Evaluation artefacts: point thumbnails, top-k marking (green = hit, red = miss) against the similarity matrix,
retrieval-example PNGs, the TensorBoard projector, and run_benchmarks' results files."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_toy import ToyCollection, calibrate_batchnorm, tiny_encoder, toy_features
from PIL import Image

from captionless3d.errors import ConfigError, DataError
from captionless3d.evaluation.artefacts import (
    GREEN,
    NEUTRAL,
    RED,
    render_point_thumbnails,
    retrieval_grid,
    topk_retrieval,
    write_retrieval_examples,
)
from captionless3d.evaluation.callbacks import run_benchmarks
from captionless3d.evaluation.runner import evaluate_encoder


def brute_topk(q, g, qid, gid, k):
    sim = (F.normalize(q.double(), dim=1) @ F.normalize(g.double(), dim=1).T).tolist()
    order = [sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in sim]
    return order, [[gid[j] == qid[i] for j in row] for i, row in enumerate(order)]


def frame_colour(image: np.ndarray, box) -> tuple[int, ...]:
    x0, y0, x1, y1 = box
    corners = {tuple(image[y, x]) for y, x in ((y0, x0), (y0, x1), (y1, x0), (y1, x1), (y0, (x0 + x1) // 2))}
    assert len(corners) == 1, corners
    return tuple(int(c) for c in corners.pop())


def test_thumbnails_are_vectorised_splats():
    rng = np.random.default_rng(0)
    clouds = np.stack([rng.normal(size=(300, 3)),
                       np.c_[rng.uniform(-1, 1, 300), np.zeros((300, 2))]]).astype(np.float32)
    thumbs = render_point_thumbnails(clouds, 32)
    assert thumbs.shape == (2, 32, 32, 3) and thumbs.dtype == np.uint8
    drawn = (thumbs != 255).any(-1)
    assert drawn[0].sum() > 100 and (thumbs[:, 0, 0] == 255).all()  # a blob; the corner stays background
    assert drawn[1].sum() < drawn[0].sum() / 2  # a thin segment covers few pixels
    np.testing.assert_array_equal(render_point_thumbnails(clouds[:1], 32), thumbs[:1])  # independent per cloud
    with pytest.raises(ConfigError, match="thumbnail_size"):
        render_point_thumbnails(clouds, 3)
    with pytest.raises(DataError, match="thumbnail points"):
        render_point_thumbnails(clouds[..., :2], 32)


@pytest.mark.parametrize("seed", [0, 1])
def test_topk_and_grid_marks_match_the_similarity_matrix(seed):
    g = torch.Generator().manual_seed(seed)
    gallery = torch.randn(9, 6, generator=g)
    gid = [f"s{i}" for i in range(9)]
    qid = [gid[i] for i in torch.randint(0, 9, (7,), generator=g).tolist()]
    queries = gallery[[gid.index(s) for s in qid]] + 0.9 * torch.randn(7, 6, generator=g)
    order, hits, scores = topk_retrieval(queries, gallery, qid, gid, k=5)
    ref_order, ref_hits = brute_topk(queries, gallery, qid, gid, 5)
    assert order.tolist() == ref_order and hits.tolist() == ref_hits
    assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    assert 0 < int(hits.sum()) < hits.numel()  # both colours occur
    photos = np.full((7, 20, 24, 3), 77, dtype=np.uint8)
    thumbs = np.full((7, 5, 16, 16, 3), 200, dtype=np.uint8)
    image, boxes = retrieval_grid(photos, thumbs, hits, frame=3)
    assert image.dtype == np.uint8 and image.shape[0] > 7 * 22 and image.shape[1] > 6 * 22
    for qi in range(7):
        assert frame_colour(image, boxes[qi][0]) == NEUTRAL
        for j in range(5):
            assert frame_colour(image, boxes[qi][1 + j]) == (GREEN if ref_hits[qi][j] else RED)
            x0, y0, _, _ = boxes[qi][1 + j]
            assert tuple(image[y0 + 3, x0 + 3]) == (200, 200, 200)  # the thumbnail sits inside the frame


@pytest.fixture(scope="module")
def toy():
    col = ToyCollection({"train": 16, "val": 8, "test": 12}, photos_per_object=2)
    enc = calibrate_batchnorm(tiny_encoder(), col.points[col.indices("train")], 64)
    return col, toy_features(col), enc


def test_retrieval_example_png_matches_hits(tmp_path, toy):
    col, feats, enc = toy
    emb = evaluate_encoder(enc, col, feats, n_points=64, protocols=("retrieval",), return_embeddings=True).embeddings
    path = write_retrieval_examples(tmp_path, col, emb, "nobg", n_queries=4, top_k=5, thumbnail_size=24)
    record = json.loads((tmp_path / "retrieval_examples_nobg.json").read_text())
    image = np.asarray(Image.open(path).convert("RGB"))
    assert len(record["queries"]) == 4
    # the same queries ranked by brute force over the full gallery of unique test shapes
    q = [r["query_pair"] for r in record["queries"]]
    pos = {int(o): i for i, o in enumerate(emb["test_index"])}
    gallery = emb["shape_emb"][[pos[int(o)] for o in emb["gallery_objects"]]]
    ref_order, ref_hits = brute_topk(emb["image_emb"]["nobg"][q], gallery, emb["pair_shape_ids"][q].tolist(),
                                     emb["gallery_shape_ids"].tolist(), 5)
    assert [r["hits"] for r in record["queries"]] == ref_hits
    assert [r["retrieved"] for r in record["queries"]] == [
        [col.object_ids[int(emb["gallery_objects"][j])] for j in row] for row in ref_order]
    # layout of retrieval_grid (frame 3, pad 4, gap 10) -> the frame colour of every cell in the PNG
    _, boxes = retrieval_grid(np.zeros((4, 8, 8, 3), np.uint8), np.zeros((4, 5, 24, 24, 3), np.uint8),
                              np.zeros((4, 5), bool))
    assert image.shape == (4 + 4 * (30 + 4), 2 * 4 + 10 + 6 * 30 + 5 * 4, 3)
    for qi, row in enumerate(ref_hits):
        for j, hit in enumerate(row):
            assert frame_colour(image, boxes[qi][1 + j]) == (GREEN if hit else RED)
    assert write_retrieval_examples(tmp_path, SimpleNamespace(), emb, "bg") is None  # no photos: nothing to draw


def test_run_benchmarks_writes_results_pngs_and_tensorboard(tmp_path, toy):
    col, feats, enc = toy
    runner = dict(split="test", n_points=64, batch_size=16, protocols=["zeroshot", "retrieval", "linear_probe"],
                  linear_probe={"l2_grid": [1e-3, 1e-1]}, artefacts={"retrieval_examples": 3, "thumbnail_size": 32})
    bench = SimpleNamespace(collection=col, features=feats, runner=runner)
    results = run_benchmarks(enc, {"toy": bench}, model_name="tiny", output_dir=tmp_path, checkpoint="best.ckpt")
    metrics = {name: result.metrics for name, result in results.items()}
    assert {"linear_probe/top1", "linear_probe/class_mean_top1", "zeroshot/top1"} <= set(metrics["toy"])
    assert not any(k.startswith("_") for k in metrics["toy"])
    out = tmp_path / "results" / "toy"
    for name in ("results.md", "results.csv", "results.json"):
        text = (out / name).read_text()
        assert "checkpoint selected on the validation split" in text and "linear probe" in text, name
        assert "L2 weight chosen on val" in text, name
    assert "linear probe Top-1" in (out / "results.md").read_text()
    assert json.loads((out / "selection.json").read_text())["linear_probe"]["l2"] in (1e-3, 1e-1)
    # per-category breakdown: zero-shot recall per class (mean over classes = class-mean top-1) and retrieval
    per_cat = json.loads((out / "per_category.json").read_text())
    zs = per_cat["zeroshot/top1"]
    assert (set(zs) <= set(col.categories)
            and abs(sum(zs.values()) / len(zs) - metrics["toy"]["zeroshot/class_mean_top1"]) < 1e-6)
    paper = per_cat["retrieval/nobg/paper"]
    n_pairs = sum(row["num_pairs"] for row in paper.values())
    weighted = sum(row["i2s_top1"] * row["num_pairs"] for row in paper.values()) / n_pairs
    assert abs(weighted - metrics["toy"]["retrieval/nobg/paper/i2s_top1"]) < 1e-6
    assert set(per_cat) >= {"retrieval/bg/paper", "retrieval/nobg/gallery", "retrieval/bg/gallery"}
    for png in ("confusion_matrix.png", "retrieval_examples_nobg.png", "retrieval_examples_bg.png"):
        with Image.open(out / png) as img:
            assert img.format == "PNG" and img.width > 60 and img.height > 60, png
    with Image.open(out / "retrieval_examples_bg.png") as img:
        assert img.size == (2 * 4 + 10 + 6 * 38 + 5 * 4, 4 + 3 * (38 + 4))
    tb = tmp_path / "tensorboard"
    assert list(tb.glob("events.out.tfevents.*"))
    assert (tb / "projector_config.pbtxt").is_file()
    (meta,) = [p for p in tb.glob("*/*/metadata.tsv") if p.parent.name.lower() == "test%2ftoy%2fshapes_and_photos"]
    lines = meta.read_text().splitlines()
    assert lines[0].split("\t") == ["modality", "category", "object"]
    assert len(lines) == 1 + 12 + 2 * 12 * 2  # test shapes + photos w/o bg + photos w/ bg
    assert {line.split("\t")[0] for line in lines[1:]} == {"shape", "photo w/o bg", "photo w/ bg"}
