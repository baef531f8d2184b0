"""Retrieval protocols: a hand-computed example, brute-force references, torchmetrics cross-checks, bad inputs."""
from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP

from captionless3d.errors import ConfigError, DataError
from captionless3d.evaluation import full_gallery_retrieval, paper_batch_retrieval, paper_permutation


def e(i: int, d: int = 6) -> list[float]:
    v = [0.0] * d
    v[i] = 1.0
    return v


# --------------------------------------------------------------------------------------------------------------------
# Hand-computed example (6 pairs, batch_size 3, seed 0)
# permutation(6, seed 0) = [2, 5, 3, 0, 1, 4] -> batch 1 = pairs (2, 5, 3), batch 2 = pairs (0, 1, 4).
# Pairs 0 and 1 are two photos of the same CAD model "A" (two different point samples: shape0 != shape1).
#   batch 2 cosines (rows images 0,1,4 ; columns shapes 0,1,4):
#       image0 = (.6,.8,0): [0.60, 0.96, 0.0]  -> the duplicate shape1 ranks first: paper MISS (rank 1)
#       image1 = (.8,.6,0): [0.80, 1.00, 0.0]  -> hit
#       image4 = (0,.6,.8): [0.00, 0.36, 0.8]  -> hit
#     shape->image: column shape0 = [.6, .8, 0] -> image1 (same model, other photo) first: MISS (rank 1)
#   batch 1 (rows images 2,5,3 ; columns shapes 2,5,3) with shapes e3, e4, e5:
#       image2 = e3:          [1, 0, 0]     -> hit
#       image5 = .6e3 + .8e5: [.6, 0, .8]   -> rank 2, miss@1, hit@5 (batch of 3)
#       image3 = e5:          [0, 0, 1]     -> hit
#     column shape5 = [0, 0, 0]: all tied; ties go to the earlier batch position (image2) -> rank 1, miss
# Full gallery (unique shapes A=e0, B=e3, C=e4, D=e5, E=e2): image0 scores A=.6, others 0 -> HIT (the duplicate
# does not exist as a separate gallery item), image5 ranks C (score 0) after B, D and the tie A -> rank 3.
# --------------------------------------------------------------------------------------------------------------------
SHAPES = torch.tensor([e(0), [0.8, 0.6, 0, 0, 0, 0], e(3), e(5), e(2), e(4)])
IMAGES = torch.tensor(
    [
        [0.6, 0.8, 0, 0, 0, 0],
        [0.8, 0.6, 0, 0, 0, 0],
        e(3),
        e(5),
        [0, 0.6, 0.8, 0, 0, 0],
        [0, 0, 0, 0.6, 0, 0.8],
    ]
)
SHAPE_IDS = ["A", "A", "B", "D", "E", "C"]
CATS = ["chair", "chair", "chair", "table", "table", "sofa"]
GALLERY_IDS = ["A", "B", "C", "D", "E"]
GALLERY = torch.tensor([e(0), e(3), e(4), e(5), e(2)])


def test_permutation_rule_is_torch_randperm():
    assert paper_permutation(6, 0).tolist() == [2, 5, 3, 0, 1, 4]
    g = torch.Generator().manual_seed(7)
    assert torch.equal(paper_permutation(50, 7), torch.randperm(50, generator=g))


def test_hand_computed_paper_protocol():
    res = paper_batch_retrieval(IMAGES, SHAPES, batch_size=3, seed=0, categories=CATS)
    assert res["i2s_rank"].tolist() == [1, 0, 0, 0, 0, 2]
    assert res["s2i_rank"].tolist() == [1, 0, 0, 0, 0, 1]
    assert res["i2s_top1"] == pytest.approx(400 / 6)
    assert res["s2i_top1"] == pytest.approx(400 / 6)
    assert res["i2s_top5"] == 100.0 and res["s2i_top5"] == 100.0
    assert res["num_pairs"] == 6 and res["num_batches"] == 2 and res["seed"] == 0
    pc = res["per_category"]
    assert set(pc) == {"chair", "sofa", "table"}
    assert pc["chair"]["i2s_top1"] == pytest.approx(200 / 3) and pc["chair"]["num_pairs"] == 3
    assert pc["table"]["i2s_top1"] == 100.0 and pc["sofa"]["i2s_top1"] == 0.0
    assert pc["chair"]["s2i_top1"] == pytest.approx(200 / 3) and pc["sofa"]["s2i_top1"] == 0.0
    # scaling embeddings changes nothing (L2-normalised inside)
    res2 = paper_batch_retrieval(IMAGES * 3.0, SHAPES * 0.5, batch_size=3, seed=0)
    assert res2["i2s_top1"] == res["i2s_top1"] and torch.equal(res2["s2i_rank"], res["s2i_rank"])


def test_hand_computed_full_gallery():
    res = full_gallery_retrieval(IMAGES, SHAPE_IDS, GALLERY, GALLERY_IDS, categories=CATS)
    # image->shape: ranks 0,0,0,0,0,3 -> R@1 5/6, R@5 all, mAP (5 + 1/4)/6
    assert res["i2s_r1"] == pytest.approx(500 / 6)
    assert res["i2s_r5"] == 100.0 and res["i2s_r10"] == 100.0
    assert res["i2s_map"] == pytest.approx(100 * 5.25 / 6)
    # shape->image: A (images 0,1 at ranks 1,0 -> AP 1), B, D, E rank 0, C ties with all 5 earlier images -> rank 5
    assert res["s2i_r1"] == pytest.approx(80.0)
    assert res["s2i_r5"] == pytest.approx(80.0)
    assert res["s2i_r10"] == 100.0
    assert res["s2i_map"] == pytest.approx(100 * (4 + 1 / 6) / 5)
    assert res["i2s_num_queries"] == 6 and res["s2i_num_queries"] == 5 and res["gallery_size"] == 5
    # same-category: the sofa image only sees the sofa shape, the sofa shape only the sofa image
    assert res["samecat"]["i2s_r1"] == 100.0 and res["samecat"]["s2i_r1"] == 100.0
    pc = res["per_category"]
    assert pc["sofa"]["i2s_r1"] == 0.0 and pc["sofa"]["samecat_i2s_r1"] == 100.0
    assert pc["sofa"]["i2s_map"] == pytest.approx(25.0)
    assert pc["chair"]["num_images"] == 3 and pc["chair"]["num_shapes"] == 2
    assert pc["chair"]["s2i_r1"] == 100.0


# --------------------------------------------------------------------------------------------------------------------
# Brute-force references
# --------------------------------------------------------------------------------------------------------------------
def _cos(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    return (F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T).tolist()


def _stable_rank(scores: list[float], j: int) -> int:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # stable descending
    return order.index(j)


def brute_paper(img, shp, batch_size, seed, cats=None):
    n = img.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    hits = {"i2s_top1": [0] * n, "i2s_top5": [0] * n, "s2i_top1": [0] * n, "s2i_top5": [0] * n}
    for s in range(0, n, batch_size):
        idx = perm[s : s + batch_size]
        sim = _cos(img[idx], shp[idx])
        for a, pair in enumerate(idx):
            r_i = _stable_rank(sim[a], a)
            r_s = _stable_rank([sim[r][a] for r in range(len(idx))], a)
            hits["i2s_top1"][pair], hits["i2s_top5"][pair] = int(r_i < 1), int(r_i < 5)
            hits["s2i_top1"][pair], hits["s2i_top5"][pair] = int(r_s < 1), int(r_s < 5)
    out = {k: 100.0 * sum(v) / n for k, v in hits.items()}
    if cats is not None:
        out["per_category"] = {}
        for c in set(cats):
            members = [i for i in range(n) if cats[i] == c]
            out["per_category"][c] = {k: 100.0 * sum(v[i] for i in members) / len(members) for k, v in hits.items()}
    return out


@pytest.mark.parametrize("n,batch_size,seed", [(23, 5, 0), (40, 128, 3), (17, 1, 1), (30, 7, 11)])
def test_paper_protocol_matches_brute_force(n, batch_size, seed):
    g = torch.Generator().manual_seed(100 + n)
    shp = torch.randn(n, 8, generator=g)
    img = shp + 1.2 * torch.randn(n, 8, generator=g)
    shp[3] = shp[2]  # exact duplicate embeddings -> genuine ties, resolved by index
    cats = [random.Random(i).choice(["a", "b", "c"]) for i in range(n)]
    got = paper_batch_retrieval(img, shp, batch_size=batch_size, seed=seed, categories=cats)
    ref = brute_paper(img, shp, batch_size, seed, cats)
    for k in ("i2s_top1", "i2s_top5", "s2i_top1", "s2i_top5"):
        assert got[k] == pytest.approx(ref[k]), k
        for c in ref["per_category"]:
            assert got["per_category"][c][k] == pytest.approx(ref["per_category"][c][k]), (c, k)


def test_paper_identical_duplicates_tie_by_batch_position():
    # two pairs with bit-identical image and shape embeddings: the one earlier in the batch wins both ways
    img = torch.tensor([e(0, 3), e(0, 3), e(1, 3)])
    shp = img.clone()
    res = paper_batch_retrieval(img, shp, batch_size=3, permutation=[1, 0, 2])
    # batch order: pair1 (pos 0), pair0 (pos 1), pair2 -> pair1 wins the tie, pair0 misses
    assert res["i2s_rank"].tolist() == [1, 0, 0]
    assert res["s2i_rank"].tolist() == [1, 0, 0]
    assert res["seed"] is None


def brute_gallery(img, img_ids, gal, gal_ids, ks, img_cats=None, gal_cats=None):
    sim = _cos(img, gal)

    def stats(score_rows, q_ids, cand_ids, q_cats, cand_cats):
        hit = {k: [] for k in ks}
        aps = []
        for qi, row in enumerate(score_rows):
            cand = [j for j in range(len(cand_ids)) if q_cats is None or cand_cats[j] == q_cats[qi]]
            order = sorted(cand, key=lambda j: (-row[j], j))
            rel = [cand_ids[j] == q_ids[qi] for j in order]
            for k in ks:
                hit[k].append(any(rel[:k]))
            n_rel, found, ap = sum(rel), 0, 0.0
            for pos, r in enumerate(rel, start=1):
                if r:
                    found += 1
                    ap += found / pos
            aps.append(ap / n_rel)
        return {**{f"r{k}": 100.0 * sum(v) / len(v) for k, v in hit.items()}, "map": 100.0 * sum(aps) / len(aps)}

    q_s = [j for j in range(len(gal_ids)) if gal_ids[j] in set(img_ids)]
    s2i_rows = [[sim[i][j] for i in range(len(img_ids))] for j in q_s]
    i2s = stats(sim, img_ids, gal_ids, img_cats, gal_cats)
    s2i = stats(s2i_rows, [gal_ids[j] for j in q_s], img_ids, None if gal_cats is None else [gal_cats[j] for j in q_s],
                img_cats)
    return {**{f"i2s_{k}": v for k, v in i2s.items()}, **{f"s2i_{k}": v for k, v in s2i.items()}}


def _toy_gallery(seed=0, n_shapes=12, n_images=40, dup_gallery=True):
    g = torch.Generator().manual_seed(seed)
    shape_vecs = torch.randn(n_shapes, 16, generator=g)
    shape_cat = [["chair", "table", "lamp"][i % 3] for i in range(n_shapes)]
    ids = [f"s{i}" for i in range(n_shapes)]
    img_shape = torch.randint(0, n_shapes - 1, (n_images,), generator=g).tolist()  # last shape has no image
    img = shape_vecs[img_shape] + 1.5 * torch.randn(n_images, 16, generator=g)
    img_ids = [ids[i] for i in img_shape]
    img_cats = [shape_cat[i] for i in img_shape]
    gal, gal_ids, gal_cats = shape_vecs.clone(), list(ids), list(shape_cat)
    if dup_gallery:  # a second point sample of shapes 0 and 1 in the gallery
        gal = torch.cat([gal, shape_vecs[:2] + 0.3 * torch.randn(2, 16, generator=g)])
        gal_ids += ids[:2]
        gal_cats += shape_cat[:2]
    gal[5] = gal[4]  # exact tie between two different shapes
    return img, img_ids, img_cats, gal, gal_ids, gal_cats


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_full_gallery_matches_brute_force(chunk_size):
    img, img_ids, img_cats, gal, gal_ids, gal_cats = _toy_gallery()
    ks = (1, 3, 5, 10)
    got = full_gallery_retrieval(img, img_ids, gal, gal_ids, ks=ks, categories=img_cats, shape_categories=gal_cats,
                                 chunk_size=chunk_size)
    ref = brute_gallery(img, img_ids, gal, gal_ids, ks)
    ref_same = brute_gallery(img, img_ids, gal, gal_ids, ks, img_cats, gal_cats)
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, abs=1e-9), key
        assert got["samecat"][key] == pytest.approx(ref_same[key], abs=1e-9), key
    assert got["s2i_num_queries"] == len(gal_ids) - 1  # the imageless shape queries nothing
    # per-category rows agree with running the brute force on each category's queries
    for cat in ("chair", "table", "lamp"):
        sel = [i for i, c in enumerate(img_cats) if c == cat]
        sub = brute_gallery(img[sel], [img_ids[i] for i in sel], gal, gal_ids, ks)
        assert got["per_category"][cat]["i2s_r1"] == pytest.approx(sub["i2s_r1"])
        assert got["per_category"][cat]["i2s_map"] == pytest.approx(sub["i2s_map"])


def test_full_gallery_matches_torchmetrics():
    img, img_ids, _, gal, gal_ids, _ = _toy_gallery(seed=3)
    gal[5] = gal[5] + 0.01  # torchmetrics' sort does not promise a tie order, so avoid exact ties here
    got = full_gallery_retrieval(img, img_ids, gal, gal_ids, ks=(1, 5))
    # torchmetrics 1.9 AP treats items with a score <= 0 as non-relevant (it assumes probabilities), so feed it the
    # order-preserving map (cos + 1) / 2 + 0.01 > 0 instead of raw cosines (which can be negative).
    sim = (F.normalize(img, dim=1) @ F.normalize(gal, dim=1).T + 1) / 2 + 0.01
    target = torch.tensor([[gi == qi for gi in gal_ids] for qi in img_ids])
    indexes = torch.arange(len(img_ids))[:, None].expand_as(sim)
    for k in (1, 5):
        m = RetrievalHitRate(top_k=k)(sim.flatten(), target.flatten(), indexes=indexes.flatten())
        assert got[f"i2s_r{k}"] == pytest.approx(100 * float(m), abs=1e-4)
    m = RetrievalMAP()(sim.flatten(), target.flatten(), indexes=indexes.flatten())
    assert got["i2s_map"] == pytest.approx(100 * float(m), abs=1e-4)
    # shape->image direction: gallery shapes with images query all images
    q = [j for j, s in enumerate(gal_ids) if s in set(img_ids)]
    sim_t = sim.T[q]
    target_t = torch.tensor([[gal_ids[j] == qi for qi in img_ids] for j in q])
    idx_t = torch.arange(len(q))[:, None].expand_as(sim_t)
    m = RetrievalMAP()(sim_t.flatten(), target_t.flatten(), indexes=idx_t.flatten())
    assert got["s2i_map"] == pytest.approx(100 * float(m), abs=1e-4)
    m = RetrievalHitRate(top_k=5)(sim_t.flatten(), target_t.flatten(), indexes=idx_t.flatten())
    assert got["s2i_r5"] == pytest.approx(100 * float(m), abs=1e-4)


def test_full_gallery_perfect_and_int_ids():
    g = torch.Generator().manual_seed(0)
    shp = torch.randn(20, 8, generator=g)
    res = full_gallery_retrieval(shp * 2, torch.arange(20), shp, list(range(20)), ks=(1,))
    assert res["i2s_r1"] == 100.0 and res["i2s_map"] == 100.0 and res["s2i_map"] == 100.0


def test_full_gallery_large_is_chunked_and_fast():
    import time

    g = torch.Generator().manual_seed(0)
    n = 2000
    shp = torch.randn(n, 64, generator=g)
    img = shp + 3 * torch.randn(n, 64, generator=g)
    t = time.perf_counter()
    res = full_gallery_retrieval(img, list(range(n)), shp, list(range(n)), chunk_size=300)
    assert time.perf_counter() - t < 20
    res2 = full_gallery_retrieval(img, list(range(n)), shp, list(range(n)), chunk_size=n)
    for k in ("i2s_r1", "i2s_r10", "i2s_map", "s2i_r5", "s2i_map"):
        assert res[k] == pytest.approx(res2[k])
    assert 0 < res["i2s_r1"] < 100


# --------------------------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------------------------
def test_paper_bad_inputs():
    x = torch.randn(5, 4)
    with pytest.raises(DataError, match="5 rows but shape_emb has 4"):
        paper_batch_retrieval(x, x[:4])
    y = x.clone()
    y[2, 1] = float("nan")
    with pytest.raises(DataError, match="shape_emb: 1 row"):
        paper_batch_retrieval(x, y)
    with pytest.raises(DataError, match="dimension mismatch"):
        paper_batch_retrieval(x, torch.randn(5, 3))
    with pytest.raises(DataError, match="empty"):
        paper_batch_retrieval(torch.zeros(0, 4), torch.zeros(0, 4))
    with pytest.raises(DataError, match="empty category"):
        paper_batch_retrieval(x, x, categories=["a", "b", "", "a", "b"])
    with pytest.raises(DataError, match="4 entries"):
        paper_batch_retrieval(x, x, categories=["a"] * 4)
    with pytest.raises(ConfigError, match="batch_size"):
        paper_batch_retrieval(x, x, batch_size=0)
    with pytest.raises(DataError, match="permutation"):
        paper_batch_retrieval(x, x, permutation=[0, 0, 1, 2, 3])
    with pytest.raises(DataError, match="all-zero"):
        paper_batch_retrieval(x, torch.zeros(5, 4))


def test_gallery_bad_inputs():
    img, img_ids, img_cats, gal, gal_ids, gal_cats = _toy_gallery()
    with pytest.raises(DataError, match="not in the gallery"):
        full_gallery_retrieval(img, ["nope"] + img_ids[1:], gal, gal_ids)
    with pytest.raises(DataError, match="image_shape_ids"):
        full_gallery_retrieval(img, img_ids[:-1], gal, gal_ids)
    with pytest.raises(DataError, match="shape_ids"):
        full_gallery_retrieval(img, img_ids, gal, gal_ids[:-1])
    with pytest.raises(DataError, match="dimension mismatch"):
        full_gallery_retrieval(img, img_ids, gal[:, :8], gal_ids)
    bad = img.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(DataError, match="NaN/Inf"):
        full_gallery_retrieval(bad, img_ids, gal, gal_ids)
    with pytest.raises(DataError, match="empty category"):
        full_gallery_retrieval(img, img_ids, gal, gal_ids, categories=[None] + img_cats[1:])
    with pytest.raises(DataError, match="cannot infer"):  # the imageless gallery shape has no category
        full_gallery_retrieval(img, img_ids, gal, gal_ids, categories=img_cats)
    wrong = list(gal_cats)
    wrong[0] = "sofa"
    with pytest.raises(DataError, match="its images are"):
        full_gallery_retrieval(img, img_ids, gal, gal_ids, categories=img_cats, shape_categories=wrong)
    with pytest.raises(ConfigError, match="ks"):
        full_gallery_retrieval(img, img_ids, gal, gal_ids, ks=(0, 5))
    with pytest.raises(DataError, match="empty id"):
        full_gallery_retrieval(img, [""] + img_ids[1:], gal, gal_ids)
    assert math.isfinite(full_gallery_retrieval(img, img_ids, gal, gal_ids)["i2s_map"])
