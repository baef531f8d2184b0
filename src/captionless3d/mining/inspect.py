"""Look at mined priors: top hard negatives per object, a histogram of the prior, an anchor-vs-negatives image grid.

    python -m captionless3d.mining.inspect prior_dir=.cache/priors/i2i-... [features_dir=.cache/features/...]
        [views=views.npy] [out_dir=prior_inspect] [samples=5] [top=8] [seed=0]

(``--prior-dir X`` style works too.) ``prior_dir`` is a saved :class:`~captionless3d.mining.PriorStore` (dense,
per category) or :class:`~captionless3d.mining.sparse.SparsePriorStore` (global top-k); the manifest says which.
With ``features_dir`` (a feature store) the raw cosine of the mean view embeddings is printed next to each prior
value. Writes ``out_dir/prior_histogram.png`` and, with ``views`` (an ``(N, V, H, W, 3)`` uint8 ``.npy`` of renders,
e.g. a collection's ``views``), ``out_dir/negatives_grid.png``: one row per sampled anchor, its first view and then
its mined negatives, strongest first. PIL only (no matplotlib).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from captionless3d.errors import CacheError, ConfigError, DataError
from captionless3d.utils.atomic import atomic_write_with

__all__ = ["load_prior", "hard_negatives", "prior_values", "histogram_png", "negatives_grid_png", "main"]


def load_prior(prior_dir: str | Path) -> Any:
    """Load a dense or sparse prior store, picking the class from the manifest's ``kind``."""
    from captionless3d.mining.sparse import MANIFEST_KIND as SPARSE_KIND
    from captionless3d.mining.sparse import SparsePriorStore
    from captionless3d.mining.store import MANIFEST_KIND as DENSE_KIND
    from captionless3d.mining.store import PriorStore

    path = Path(prior_dir) / "manifest.json"
    try:
        kind = json.loads(path.read_text("utf-8")).get("kind")
    except (OSError, ValueError, AttributeError) as exc:
        raise CacheError(f"{path}: no readable prior manifest ({exc})") from exc
    if kind == SPARSE_KIND:
        return SparsePriorStore.load(prior_dir)
    if kind == DENSE_KIND:
        return PriorStore.load(prior_dir)
    raise CacheError(f"{path}: kind {kind!r} is not a prior store")


def _is_sparse(prior: Any) -> bool:
    return hasattr(prior, "neighbours")


def candidate_anchors(prior: Any) -> np.ndarray:
    """Global indices of objects that have prior entries."""
    if _is_sparse(prior):
        keys = prior._keys.cpu().numpy()  # noqa: SLF001 - read-only use within the mining package
        return np.unique(keys // max(prior.num_objects, 1))
    return (np.concatenate([prior.category_members(c) for c in prior.categories]) if prior.categories
            else np.zeros(0, np.int64))


def hard_negatives(prior: Any, index: int, top: int = 8) -> list[tuple[int, float]]:
    """The ``top`` strongest negatives of object ``index``: ``[(global index, l), ...]``, l descending (ties: index)."""
    if _is_sparse(prior):
        cols, w = prior.neighbours(index)
    else:
        found = [c for c in prior.categories if index in set(prior.category_members(c).tolist())]
        if not found:
            return []
        members = prior.category_members(found[0])
        row = prior.category_matrix(found[0])[int(np.searchsorted(members, index))]
        keep = members != index
        cols, w = members[keep], row[keep]
        order = np.lexsort((cols, -w))
        cols, w = cols[order], w[order]
    return [(int(c), float(x)) for c, x in zip(cols[:top], w[:top])]


def prior_values(prior: Any, max_values: int = 2_000_000, seed: int = 0) -> np.ndarray:
    """Off-diagonal prior values (a random subsample of at most ``max_values``), for the histogram."""
    if _is_sparse(prior):
        vals = prior.weights
    else:
        parts = []
        for c in prior.categories:
            m = prior.category_matrix(c)
            parts.append(m[~np.eye(m.shape[0], dtype=bool)])
        vals = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if vals.size > max_values:
        vals = np.random.default_rng(seed).choice(vals, max_values, replace=False)
    return vals.astype(np.float32)


def histogram_png(values: np.ndarray, path: str | Path, *, bins: int = 50, title: str = "prior l_ij",
                  size: tuple[int, int] = (640, 360)) -> dict[str, Any]:
    """Draw a histogram with PIL and save it as PNG. Returns ``{"counts", "edges"}``."""
    from PIL import Image, ImageDraw

    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise DataError("histogram_png: no values")
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1e-6
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    w, h = size
    ml, mr, mt, mb = 50, 15, 30, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    pw, ph = w - ml - mr, h - mt - mb
    top = max(int(counts.max()), 1)
    for b, c in enumerate(counts):
        x0 = ml + pw * b / bins
        x1 = ml + pw * (b + 1) / bins - 1
        y0 = mt + ph * (1 - c / top)
        if c:
            draw.rectangle([x0, y0, max(x0, x1), mt + ph], fill=(70, 110, 180))
    draw.line([ml, mt + ph, ml + pw, mt + ph], fill="black")
    draw.line([ml, mt, ml, mt + ph], fill="black")
    draw.text((ml, 8), f"{title}: n={values.size}, mean={values.mean():.3f}, median={np.median(values):.3f}",
              fill="black")
    for frac in (0.0, 0.5, 1.0):
        x = ml + pw * frac
        draw.line([x, mt + ph, x, mt + ph + 4], fill="black")
        draw.text((x - 15, mt + ph + 8), f"{lo + (hi - lo) * frac:.3f}", fill="black")
    draw.text((4, mt), str(top), fill="black")
    draw.text((4, mt + ph - 10), "0", fill="black")
    atomic_write_with(path, lambda tmp: img.save(tmp, format="PNG"))  # creates the parent directory
    return {"counts": counts, "edges": edges}


def negatives_grid_png(
    views: np.ndarray,
    rows: Sequence[tuple[int, Sequence[tuple[int, float]]]],
    path: str | Path,
    *,
    view_index: int = 0,
    cell: int = 96,
) -> tuple[int, int]:
    """Grid PNG: per row the anchor's render, then its negatives (``(index, l)``) with ``l`` printed under each.

    ``views``: ``(N, V, H, W, 3)`` uint8 (memory maps are read lazily). Returns the image size.
    """
    from PIL import Image, ImageDraw

    if getattr(views, "ndim", None) != 5 or views.shape[-1] != 3:
        raise DataError(f"views: expected (N, V, H, W, 3) uint8, got shape {tuple(getattr(views, 'shape', ()))}")
    if not rows:
        raise DataError("negatives_grid_png: nothing to draw")
    ncols = 1 + max(len(neg) for _, neg in rows)
    label_h = 14
    img = Image.new("RGB", (ncols * cell, len(rows) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(img)

    def tile(i: int) -> Image.Image:
        arr = np.asarray(views[i, min(view_index, views.shape[1] - 1)], dtype=np.uint8)
        return Image.fromarray(arr).resize((cell, cell))

    for r, (anchor, negs) in enumerate(rows):
        y = r * (cell + label_h)
        img.paste(tile(anchor), (0, y))
        draw.rectangle([0, y, cell - 1, y + cell - 1], outline=(220, 40, 40), width=2)
        draw.text((2, y + cell), f"#{anchor}", fill="black")
        for c, (j, l) in enumerate(negs, start=1):
            img.paste(tile(j), (c * cell, y))
            draw.text((c * cell + 2, y + cell), f"#{j} l={l:.3f}", fill="black")
    atomic_write_with(path, lambda tmp: img.save(tmp, format="PNG"))  # creates the parent directory
    return img.size


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m captionless3d.mining.inspect", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prior-dir", required=True)
    ap.add_argument("--features-dir")
    ap.add_argument("--views", help="(N, V, H, W, 3) uint8 .npy of renders")
    ap.add_argument("--out-dir", default="prior_inspect")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--anchors", type=int, nargs="*", help="explicit anchor indices instead of a random sample")
    # accept Hydra-style key=value too
    fixed = [f"--{a.split('=', 1)[0].replace('_', '-')}={a.split('=', 1)[1]}" if "=" in a and not a.startswith("-")
             else a for a in argv]
    return ap.parse_args(fixed)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parse_args(list(sys.argv[1:] if argv is None else argv))
    prior = load_prior(args.prior_dir)
    out_dir = Path(args.out_dir)
    mean = None
    if args.features_dir:
        from captionless3d.teacher.features import load_feature_store

        mean = load_feature_store(args.features_dir, verify_checksums=False).mean_view_emb()
        if mean.shape[0] != prior.num_objects:
            raise DataError(f"features_dir has {mean.shape[0]} objects, the prior {prior.num_objects}")
    pool = candidate_anchors(prior)
    if args.anchors:
        anchors = [int(a) for a in args.anchors]
    else:
        if pool.size == 0:
            raise DataError(f"{args.prior_dir}: the prior has no entries")
        rng = np.random.default_rng(args.seed)
        anchors = sorted(rng.choice(pool, min(args.samples, pool.size), replace=False).tolist())
    print(repr(prior))
    rows = []
    for a in anchors:
        negs = hard_negatives(prior, a, args.top)
        rows.append((a, negs))
        print(f"object {a}: {len(negs)} hardest negatives")
        for j, l in negs:
            extra = f"  cos={float(mean[a] @ mean[j]):+.4f}" if mean is not None else ""
            print(f"    {j:>8d}  l={l:.4f}{extra}")
    vals = prior_values(prior, seed=args.seed)
    result: dict[str, Any] = {"anchors": rows}
    if vals.size:
        histogram_png(vals, out_dir / "prior_histogram.png", title=f"{getattr(prior, 'kind', 'prior')} l_ij")
        result["histogram"] = str(out_dir / "prior_histogram.png")
        print(f"histogram of {vals.size} prior values -> {result['histogram']}")
    if args.views:
        try:
            views = np.load(args.views, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"{args.views}: unreadable views ({exc})") from exc
        drawable = [(a, n) for a, n in rows if n]
        if drawable:
            negatives_grid_png(views, drawable, out_dir / "negatives_grid.png")
            result["grid"] = str(out_dir / "negatives_grid.png")
            print(f"anchor vs. negatives grid -> {result['grid']}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (CacheError, DataError, ConfigError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
