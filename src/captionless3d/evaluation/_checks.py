"""Input validation shared by the evaluation functions: every bad input becomes a :class:`DataError` naming the
array."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from captionless3d.errors import DataError


def as_embeddings(x: Any, name: str, *, allow_empty: bool = False) -> torch.Tensor:
    """Return ``x`` as a 2-D float32 CPU-or-device tensor, L2-normalised per row.

    Raises :class:`DataError` (naming ``name``) for a wrong rank, no rows, NaN/Inf values or an all-zero row (whose
    direction, hence its cosine similarity, is undefined).
    """
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 2:
        raise DataError(f"{name}: expected shape (N, D), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise DataError(f"{name}: embedding dimension is 0")
    if x.shape[0] == 0 and not allow_empty:
        raise DataError(f"{name}: no rows (empty input)")
    if not torch.is_floating_point(x):
        raise DataError(f"{name}: expected floating point embeddings, got dtype {x.dtype}")
    x = x.detach().float()
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()[:10].tolist()
        raise DataError(f"{name}: {int(bad.sum())} row(s) contain NaN/Inf (first rows: {rows})")
    norms = x.norm(dim=1)
    zero = norms == 0
    if bool(zero.any()):
        rows = torch.nonzero(zero).flatten()[:10].tolist()
        raise DataError(f"{name}: {int(zero.sum())} all-zero row(s) cannot be L2-normalised (first rows: {rows})")
    return F.normalize(x, dim=1)


def check_same_dim(a: torch.Tensor, a_name: str, b: torch.Tensor, b_name: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise DataError(
            f"embedding dimension mismatch: {a_name} has D={a.shape[1]} but {b_name} has D={b.shape[1]} "
            "(were they produced by the same teacher / projection head?)"
        )


def as_categories(categories: Sequence[Any] | None, n: int, name: str) -> list[str] | None:
    """Validate a per-item category list: right length, no empty/None names. Returns a list of str (or None)."""
    if categories is None:
        return None
    if isinstance(categories, (str, bytes)):
        raise DataError(f"{name}: expected one category per item, got a single string {categories!r}")
    cats = list(categories.tolist() if isinstance(categories, (np.ndarray, torch.Tensor)) else categories)
    if len(cats) != n:
        raise DataError(f"{name}: has {len(cats)} entries but there are {n} items")
    out: list[str] = []
    for i, c in enumerate(cats):
        if c is None or (isinstance(c, str) and c.strip() == ""):
            raise DataError(f"{name}: item {i} has an empty category name ({c!r})")
        out.append(str(c))
    return out


def as_id_list(ids: Any, name: str) -> list[Any]:
    """A sequence/array/tensor of ids (str or int) as a plain list; ``None`` ids are refused."""
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 1:
            raise DataError(f"{name}: expected a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        raw = ids.tolist()
    elif isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise DataError(f"{name}: expected a 1-D sequence of ids, got shape {ids.shape}")
        raw = ids.tolist()
    elif isinstance(ids, (str, bytes)):
        raise DataError(f"{name}: expected one id per item, got a single string {ids!r}")
    else:
        raw = list(ids)
    for i, v in enumerate(raw):
        if v is None or (isinstance(v, str) and v == ""):
            raise DataError(f"{name}: item {i} has an empty id ({v!r})")
    return raw


def factorize(*id_lists: list[Any]) -> list[torch.Tensor]:
    """Map several id lists onto one shared integer code space (equal ids -> equal codes)."""
    table: dict[Any, int] = {}
    out = []
    for ids in id_lists:
        codes = [table.setdefault(i, len(table)) for i in ids]
        out.append(torch.tensor(codes, dtype=torch.int64))
    return out
