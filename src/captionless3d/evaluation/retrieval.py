"""Image<->shape retrieval from embeddings, numbers in percent. Two protocols.

1. :func:`paper_batch_retrieval` -- the paper's Pix3D protocol (docs/method.md, Evaluation protocols; the
   released ``test_retrieval.py``).

   * **Permutation rule**: ``perm = torch.randperm(N, generator=torch.Generator().manual_seed(seed))`` (CPU
     generator). Batch ``b`` holds the pairs ``perm[b*batch_size : (b+1)*batch_size]``; the last batch is smaller.
     (The original code gets its order from a ``DataLoader(shuffle=True)`` after ``torch.manual_seed(0)``, whose
     permutation depends on every global-RNG call made before it, so its exact order cannot be reproduced; ours is the
     same protocol with a documented, reproducible order. Pass ``permutation=`` to use any other order.)
   * Inside a batch of B pairs, ``S = cos(images, shapes)`` is ``B x B``. **Image->shape**: row ``i`` is a hit@k if
     its own column ``i`` is among the k best columns. **Shape->image**: column ``j`` is a hit@k if row ``j`` is among
     the k best rows. Each pair is its own column/row, so another pair of the *same* CAD model in the batch is a
     different column: retrieving it is a **miss** (this caps the attainable Top-1, as in the paper).
   * **Ties**: rank of the true item = (#items with a strictly higher score) + (#items with an equal score and a
     smaller position inside the batch), i.e. a stable descending sort, ties resolved by index. Hit@k iff rank < k. In
     a batch with fewer than k items, every item is a hit@k.
   * Accuracy = hits / number of pairs (over all batches), per direction; also per category when ``categories``
     is given.

2. :func:`full_gallery_retrieval` -- our own protocol over a gallery of (normally unique) shapes.

   * Image->shape: each image query ranks **all** gallery shapes; gallery items whose shape id equals the image's
     shape id are relevant, so a duplicate of the right shape counts as correct. Recall@k (= hit rate@k: at least one
     relevant item in the top k) and mAP (mean over queries of average precision).
   * Shape->image: each gallery shape that has at least one image queries all images; relevant = images of that
     shape. Gallery shapes without any image are distractors for image->shape only (``s2i_num_queries`` says how
     many shapes queried).
   * ``samecat``: the same, but each query ranks only gallery items of its own category (fine-grained retrieval;
     other categories are masked to ``-inf`` before ranking).
   * Ties: as in a stable descending sort, i.e. equal scores are resolved by gallery index (the rank of a relevant
     item j is ``#{scores > s_j} + #{scores == s_j at a smaller index}``; no full sort is done).
   * Implemented in vectorised torch rather than with torchmetrics' retrieval metrics: those keep every score of
     the Q x G matrix in memory until ``compute()``, and (torchmetrics 1.9) ``retrieval_average_precision`` treats
     items with a score <= 0 as non-relevant, which is wrong for cosine similarities. The tests check this code
     against a brute-force Python reference and against torchmetrics on positive scores.
   * The similarity matrix is processed in chunks of query rows (``chunk_size``, default chosen so that one chunk
     holds about 4 M scores), so memory stays bounded; a 10,000 x 10,000 evaluation takes seconds on CPU (see
     ``benchmarks/bench_eval.py``).

All embeddings are L2-normalised here; the score is plain cosine similarity. Bad inputs (mismatched counts, NaN/Inf,
dimension mismatch, empty category names, an image whose shape is not in the gallery) raise :class:`DataError`.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from captionless3d.errors import ConfigError, DataError
from captionless3d.evaluation._checks import as_categories, as_embeddings, as_id_list, check_same_dim, factorize

__all__ = ["paper_batch_retrieval", "full_gallery_retrieval", "paper_permutation"]

_TARGET_CHUNK_ELEMS = 1 << 22  # ~4 M scores per chunk (16 MB float32, plus sort indices)


def paper_permutation(n: int, seed: int = 0) -> torch.Tensor:
    """The order in which :func:`paper_batch_retrieval` visits the N pairs: ``torch.randperm(n, generator=g)`` with
    ``g = torch.Generator().manual_seed(seed)``."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))


def _pct(x: torch.Tensor) -> float:
    return 100.0 * float(x.double().mean()) if x.numel() else float("nan")


def _per_category(cats: list[str], values: dict[str, torch.Tensor], count_key: str) -> dict[str, dict[str, float]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(cats):
        groups[c].append(i)
    out: dict[str, dict[str, float]] = {}
    for c in sorted(groups):
        idx = torch.tensor(groups[c], dtype=torch.long)
        row: dict[str, float] = {k: _pct(v[idx]) for k, v in values.items()}
        row[count_key] = len(idx)
        out[c] = row
    return out


def paper_batch_retrieval(
    image_emb: torch.Tensor | np.ndarray,
    shape_emb: torch.Tensor | np.ndarray,
    *,
    batch_size: int = 128,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    permutation: torch.Tensor | Sequence[int] | None = None,
) -> dict[str, Any]:
    """The paper's in-batch retrieval protocol (see module docstring for the exact permutation and tie rules).

    ``image_emb[i]`` and ``shape_emb[i]`` form pair ``i`` (N pairs). Returns ``i2s_top1``, ``i2s_top5``, ``s2i_top1``,
    ``s2i_top5`` (percent), ``num_pairs``, ``num_batches``, ``batch_size``, ``seed`` (None when ``permutation`` was
    given), ``i2s_rank`` / ``s2i_rank`` (LongTensor ``(N,)``, 0-based rank of the true item inside its batch, in the
    original pair order), and, when ``categories`` (one
    name per pair) is given, ``per_category = {name: {i2s_top1, i2s_top5, s2i_top1, s2i_top5, num_pairs}}``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ConfigError(f"batch_size: must be a positive integer, got {batch_size!r}")
    img = as_embeddings(image_emb, "image_emb")
    shp = as_embeddings(shape_emb, "shape_emb")
    if img.shape[0] != shp.shape[0]:
        raise DataError(
            f"image_emb has {img.shape[0]} rows but shape_emb has {shp.shape[0]}: the paper protocol needs one shape "
            "embedding per image (pair i = image i + shape i)"
        )
    check_same_dim(img, "image_emb", shp, "shape_emb")
    n = img.shape[0]
    cats = as_categories(categories, n, "categories")
    if permutation is None:
        perm = paper_permutation(n, seed)
    else:
        perm = torch.as_tensor(permutation, dtype=torch.long).flatten().cpu()
        if perm.numel() != n or not torch.equal(torch.sort(perm).values, torch.arange(n)):
            raise DataError(f"permutation: must be a permutation of range({n})")

    rank_i2s = torch.empty(n, dtype=torch.long)
    rank_s2i = torch.empty(n, dtype=torch.long)
    num_batches = 0
    for start in range(0, n, int(batch_size)):
        idx = perm[start : start + int(batch_size)]
        b = idx.numel()
        dev_idx = idx.to(img.device)
        sim = img[dev_idx] @ shp[dev_idx].T  # (B, B): rows images, columns shapes
        pos = sim.diagonal()
        ar = torch.arange(b, device=sim.device)
        earlier = ar[None, :] < ar[:, None]  # [i, j] = j comes before i in the batch
        # image i vs shape columns j: strictly better, or equal score and earlier column
        r_i2s = (sim > pos[:, None]).sum(1) + ((sim == pos[:, None]) & earlier).sum(1)
        # shape j vs image rows i (work on the transpose so the same formula applies)
        sim_t = sim.T
        r_s2i = (sim_t > pos[:, None]).sum(1) + ((sim_t == pos[:, None]) & earlier).sum(1)
        rank_i2s[idx] = r_i2s.cpu()
        rank_s2i[idx] = r_s2i.cpu()
        num_batches += 1

    hits = {
        "i2s_top1": rank_i2s < 1,
        "i2s_top5": rank_i2s < 5,
        "s2i_top1": rank_s2i < 1,
        "s2i_top5": rank_s2i < 5,
    }
    out: dict[str, Any] = {k: _pct(v) for k, v in hits.items()}
    out.update(num_pairs=n, num_batches=num_batches, batch_size=int(batch_size), seed=int(seed))
    out.update(i2s_rank=rank_i2s, s2i_rank=rank_s2i)
    if permutation is not None:
        out["seed"] = None
    if cats is not None:
        out["per_category"] = _per_category(cats, hits, "num_pairs")
    return out


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(int(k) for k in ks)
    except (TypeError, ValueError):
        raise ConfigError(f"ks: expected a sequence of positive integers, got {ks!r}") from None
    if not out or any(k < 1 for k in out) or any(int(k) != k for k in ks):
        raise ConfigError(f"ks: expected a non-empty sequence of positive integers, got {ks!r}")
    return tuple(sorted(set(out)))


def _rank_queries(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    q_codes: torch.Tensor,
    g_codes: torch.Tensor,
    ks: tuple[int, ...],
    chunk_size: int,
    q_cat: torch.Tensor | None = None,
    g_cat: torch.Tensor | None = None,
) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Hit@k (bool ``(Q,)`` per k) and average precision (float64 ``(Q,)``) of each query over the whole gallery.

    Relevant = same code. If ``q_cat``/``g_cat`` are given, gallery items of another category are masked to -inf.
    Every query must have at least one relevant item (checked by the callers).

    No full sort: the 0-based rank of a relevant item j is ``#{l: s_l > s_j} + #{l: s_l == s_j, l < j}`` (exactly its
    position in a stable descending sort), computed by comparisons, so the work is (number of relevant pairs) x G.
    Hit@k iff the best relevant rank < k; AP = mean over relevant items of (their order among the relevant) / (rank+1).
    """
    nq, ng = queries.shape[0], gallery.shape[0]
    dev = queries.device
    q_codes, g_codes = q_codes.to(dev), g_codes.to(dev)
    masked = q_cat is not None and g_cat is not None
    if masked:
        q_cat, g_cat = q_cat.to(dev), g_cat.to(dev)
    hits = {k: torch.zeros(nq, dtype=torch.bool) for k in ks}
    ap = torch.zeros(nq, dtype=torch.float64)
    gal_index = torch.arange(ng, device=dev)
    for s in range(0, nq, chunk_size):
        e = min(s + chunk_size, nq)
        c = e - s
        sim = queries[s:e] @ gallery.T  # (c, G)
        if masked:
            sim.masked_fill_(q_cat[s:e, None] != g_cat[None, :], float("-inf"))
        rel = g_codes[None, :] == q_codes[s:e, None]
        rows, cols = rel.nonzero(as_tuple=True)  # row-major: rows ascending, cols ascending within a row
        del rel
        n_rel = torch.bincount(rows, minlength=c)
        first = torch.cumsum(n_rel, 0) - n_rel
        slot = torch.arange(rows.numel(), device=dev) - first[rows]  # j-th relevant item of its row
        ranks = torch.empty(rows.numel(), dtype=torch.long, device=dev)
        for m in range(int(n_rel.max())):
            pick = slot == m
            r_m, c_m = rows[pick], cols[pick]
            sub = sim if r_m.numel() == c else sim[r_m]  # rows that have an m-th relevant item
            thr = sim[r_m, c_m][:, None]
            gt = torch.count_nonzero(sub > thr, dim=1)
            ge = torch.count_nonzero(sub >= thr, dim=1)
            tied = torch.nonzero(ge - gt > 1).flatten()  # other items with exactly the same score: rare
            if tied.numel():
                t_sub = sub[tied]
                gt[tied] += ((t_sub == thr[tied]) & (gal_index[None, :] < c_m[tied, None])).sum(dim=1)
            ranks[pick] = gt
        del sim
        best = torch.full((c,), ng, dtype=torch.long, device=dev).scatter_reduce_(0, rows, ranks, reduce="amin")
        for k in ks:
            hits[k][s:e] = (best < k).cpu()
        # order of each relevant item among the relevant of its row, by rank (ranks within a row are distinct)
        key = rows.double() * (ng + 1) + ranks.double()
        sorted_pos = torch.argsort(key)
        ranks_sorted = ranks[sorted_pos]
        rows_sorted = rows[sorted_pos]
        within = torch.arange(rows.numel(), device=dev) - first[rows_sorted] + 1
        prec = within.double() / (ranks_sorted.double() + 1.0)
        ap_chunk = torch.zeros(c, dtype=torch.float64, device=dev).index_add_(0, rows_sorted, prec)
        ap[s:e] = (ap_chunk / n_rel.double()).cpu()
    return hits, ap


def full_gallery_retrieval(
    image_emb: torch.Tensor | np.ndarray,
    image_shape_ids: Sequence[Any] | torch.Tensor | np.ndarray,
    shape_emb: torch.Tensor | np.ndarray,
    shape_ids: Sequence[Any] | torch.Tensor | np.ndarray,
    *,
    ks: Sequence[int] = (1, 5, 10),
    categories: Sequence[str] | None = None,
    shape_categories: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Full-gallery image<->shape retrieval (see module docstring).

    ``image_emb (Q, D)`` with ``image_shape_ids (Q,)`` (the id of each image's shape); gallery ``shape_emb (G, D)``
    with ``shape_ids (G,)``; ids may be ints or strings. ``categories`` (one per image) enables the per-category
    breakdown and the same-category variant; gallery categories are ``shape_categories`` or, if omitted, taken from
    the images of each shape (then every gallery shape needs at least one image).

    Returns ``i2s_r{k}``, ``i2s_map``, ``s2i_r{k}``, ``s2i_map`` (percent), ``i2s_num_queries``,
    ``s2i_num_queries``, ``gallery_size``, ``num_images``; with categories also ``samecat`` (the same metric keys,
    each query ranking only its own category) and ``per_category = {name: {<metric keys>, samecat_<metric keys>,
    num_images, num_shapes}}`` (image->shape rows grouped by image category, shape->image rows by shape category).
    """
    ks_t = _check_ks(ks)
    img = as_embeddings(image_emb, "image_emb")
    shp = as_embeddings(shape_emb, "shape_emb")
    check_same_dim(img, "image_emb", shp, "shape_emb")
    nq, ng = img.shape[0], shp.shape[0]
    img_ids = as_id_list(image_shape_ids, "image_shape_ids")
    gal_ids = as_id_list(shape_ids, "shape_ids")
    if len(img_ids) != nq:
        raise DataError(f"image_shape_ids: has {len(img_ids)} entries but image_emb has {nq} rows")
    if len(gal_ids) != ng:
        raise DataError(f"shape_ids: has {len(gal_ids)} entries but shape_emb has {ng} rows")
    if chunk_size is None:
        chunk_size = max(1, _TARGET_CHUNK_ELEMS // max(nq, ng))
    elif isinstance(chunk_size, bool) or int(chunk_size) < 1:
        raise ConfigError(f"chunk_size: must be a positive integer, got {chunk_size!r}")
    chunk_size = int(chunk_size)

    q_codes, g_codes = factorize(img_ids, gal_ids)
    in_gallery = torch.isin(q_codes, g_codes)
    if not bool(in_gallery.all()):
        missing = [img_ids[i] for i in torch.nonzero(~in_gallery).flatten()[:5].tolist()]
        raise DataError(
            f"image_shape_ids: {int((~in_gallery).sum())} image(s) refer to shapes that are not in the gallery "
            f"(e.g. {missing}); every image's shape must be in shape_ids"
        )
    has_image = torch.isin(g_codes, q_codes)
    s2i_idx = torch.nonzero(has_image).flatten()

    # categories: images, then gallery shapes (given or inferred), checked for consistency
    img_cats = as_categories(categories, nq, "categories")
    gal_cats = as_categories(shape_categories, ng, "shape_categories")
    if gal_cats is not None and img_cats is None:
        raise DataError("shape_categories given without categories (one per image); pass both or neither")
    if img_cats is not None:
        cat_of_id: dict[Any, str] = {}
        for sid, c in zip(img_ids, img_cats):
            prev = cat_of_id.setdefault(sid, c)
            if prev != c:
                raise DataError(f"categories: images of shape {sid!r} have different categories ({prev!r}, {c!r})")
        if gal_cats is None:
            no_img = [gal_ids[i] for i in torch.nonzero(~has_image).flatten()[:5].tolist()]
            if no_img:
                raise DataError(
                    f"shape_categories: cannot infer the category of gallery shapes without images (e.g. {no_img}); "
                    "pass shape_categories"
                )
            gal_cats = [cat_of_id[s] for s in gal_ids]
        else:
            for sid, c in zip(gal_ids, gal_cats):
                if sid in cat_of_id and cat_of_id[sid] != c:
                    raise DataError(
                        f"shape_categories: shape {sid!r} is {c!r} in the gallery but its images are {cat_of_id[sid]!r}"
                    )

    def run(q_cat: torch.Tensor | None, g_cat: torch.Tensor | None) -> dict[str, torch.Tensor]:
        hits_i, ap_i = _rank_queries(img, shp, q_codes, g_codes, ks_t, chunk_size, q_cat, g_cat)
        q_s = shp[s2i_idx.to(shp.device)]
        gc_s = g_cat[s2i_idx] if g_cat is not None else None
        hits_s, ap_s = _rank_queries(q_s, img, g_codes[s2i_idx], q_codes, ks_t, chunk_size, gc_s, q_cat)
        per: dict[str, torch.Tensor] = {f"i2s_r{k}": hits_i[k] for k in ks_t}
        per["i2s_map"] = ap_i
        per.update({f"s2i_r{k}": hits_s[k] for k in ks_t})
        per["s2i_map"] = ap_s
        return per

    def summarise(per: dict[str, torch.Tensor]) -> dict[str, float]:
        return {k: _pct(v) for k, v in per.items()}

    per_all = run(None, None)
    out: dict[str, Any] = summarise(per_all)
    out.update(i2s_num_queries=nq, s2i_num_queries=int(s2i_idx.numel()), gallery_size=ng, num_images=nq, ks=list(ks_t))
    if img_cats is not None and gal_cats is not None:
        qc, gc = factorize(img_cats, gal_cats)
        per_same = run(qc, gc)
        out["samecat"] = summarise(per_same)
        s2i_cats = [gal_cats[i] for i in s2i_idx.tolist()]
        per_cat: dict[str, dict[str, float]] = {}
        for prefix, per in (("", per_all), ("samecat_", per_same)):
            i2s = _per_category(img_cats, {prefix + k: v for k, v in per.items() if k.startswith("i2s")}, "num_images")
            s2i = _per_category(s2i_cats, {prefix + k: v for k, v in per.items() if k.startswith("s2i")}, "num_shapes")
            for c in set(i2s) | set(s2i):
                per_cat.setdefault(c, {}).update(i2s.get(c, {}))
                per_cat[c].update(s2i.get(c, {}))
        out["per_category"] = {c: per_cat[c] for c in sorted(per_cat)}
    return out
