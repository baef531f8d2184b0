"""Property-based fuzzing of the point ops (models/ops.py), the encoder and the point-cloud normalisation (issue #10).

Inputs: extreme coordinates (up to the float32 range), single-point clouds, duplicate and constant clouds, NaN/Inf.
Acceptable outcomes: a correct result (valid indices that satisfy the op's definition; a finite embedding) or one of
our own errors; never a hang (pytest-timeout), another exception type, or a silent NaN embedding.
"""
from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from captionless3d.data.pointcloud import check_points, normalise_unit_sphere
from captionless3d.errors import Captionless3DError, DataError
from captionless3d.models import ops

FUZZ = settings(max_examples=int(os.environ.get("RELIABILITY_EXAMPLES", 50)), deadline=None, derandomize=True,
                database=None,
                suppress_health_check=[HealthCheck.too_slow])
STATS: Counter = Counter()

finite32 = st.floats(-3.0e38, 3.0e38).map(np.float32)
small = st.floats(-10, 10, width=32)
values = st.one_of(finite32, small, st.sampled_from([0.0, -0.0, 1e-38, -1e-38, np.nan, np.inf, -np.inf]))


@st.composite
def clouds(draw, min_n: int = 1, max_n: int = 40, max_b: int = 3, allow_bad: bool = True):
    """(B, N, 3) float32 clouds: random, with duplicated points, constant, tiny or huge, optionally NaN/Inf."""
    b = draw(st.integers(1, max_b))
    n = draw(st.integers(min_n, max_n))
    style = draw(st.sampled_from(["random", "random", "random", "duplicates", "constant", "huge", "tiny"]
                                 + (["nonfinite"] if allow_bad else [])))
    if style == "random":
        arr = draw(hnp.arrays(np.float32, (b, n, 3), elements=small))
    elif style == "duplicates":
        base = draw(hnp.arrays(np.float32, (b, max(1, n // 3), 3), elements=small))
        arr = base[:, draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, base.shape[1] - 1)))]
    elif style == "constant":
        arr = np.full((b, n, 3), draw(finite32), np.float32)
    elif style == "huge":
        arr = draw(hnp.arrays(np.float32, (b, n, 3), elements=finite32))
    elif style == "tiny":
        arr = draw(hnp.arrays(np.float32, (b, n, 3), elements=st.floats(-1e-30, 1e-30).map(np.float32)))
    else:
        arr = draw(hnp.arrays(np.float32, (b, n, 3), elements=values))
    STATS[f"cloud/{style}"] += 1
    return torch.from_numpy(np.ascontiguousarray(arr))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    print("\npoint fuzzing cases:\n  " + "\n  ".join(f"{k}: {v}" for k, v in sorted(STATS.items())))
    if os.environ.get("RELIABILITY_STATS"):
        with open(os.environ["RELIABILITY_STATS"], "a") as handle:
            handle.write(json.dumps({"module": "fuzz_points", "stats": dict(STATS)}) + "\n")


# --------------------------------------------------------------------------------------------- ops


@pytest.mark.timeout(120)
@FUZZ
@given(xyz=clouds(), data=st.data())
def test_fps_returns_valid_farthest_indices_on_any_input(xyz, data):
    B, N, _ = xyz.shape
    npoint = data.draw(st.integers(1, N), label="npoint")
    start = data.draw(st.integers(0, N - 1), label="start")
    idx = ops.furthest_point_sample(xyz, npoint, start=start)
    STATS["fps"] += 1
    assert idx.shape == (B, npoint) and idx.dtype == torch.int64
    assert bool(((idx >= 0) & (idx < N)).all()) and bool((idx[:, 0] == start).all())
    x = xyz.double()
    nonzero = x.abs()[x != 0]
    # distinctness is only decidable when float32 squared distances neither overflow nor underflow to 0
    if torch.isfinite(x).all() and bool((nonzero < 1e6).all()) and bool((nonzero > 1e-6).all()):
        for b in range(B):
            distinct = torch.unique(x[b], dim=0).shape[0]
            picked = idx[b, : min(npoint, distinct)]
            assert torch.unique(x[b, picked], dim=0).shape[0] == picked.numel(), "FPS picked a duplicate point early"


def _reference_ball_query(support, query, radius, nsample):
    r2 = np.float32(radius) ** 2
    out = np.zeros((support.shape[0], query.shape[1], nsample), np.int64)
    s, q = support.double().numpy(), query.double().numpy()
    for b in range(s.shape[0]):
        for m in range(q.shape[1]):
            inside = np.flatnonzero(((s[b] - q[b, m]) ** 2).sum(-1) < r2)
            if inside.size:
                pick = list(inside[:nsample]) + [inside[0]] * max(0, nsample - inside.size)
                out[b, m] = pick
    return out


@pytest.mark.timeout(120)
@FUZZ
@given(support=clouds(max_n=30), data=st.data())
def test_ball_query_is_valid_and_matches_brute_force_away_from_the_boundary(support, data):
    B, N, _ = support.shape
    m = data.draw(st.integers(1, N), label="queries")
    query = support[:, :m].clone()
    radius = data.draw(st.sampled_from([1e-6, 0.05, 0.5, 2.0, 1e3]), label="radius")
    nsample = data.draw(st.integers(1, 12), label="nsample")
    idx = ops.ball_query(support, query, radius, nsample)
    STATS["ball_query"] += 1
    assert idx.shape == (B, m, nsample) and bool(((idx >= 0) & (idx < N)).all())
    if torch.isfinite(support).all() and bool((support.abs() < 100).all()):
        ref = _reference_ball_query(support, query, radius, nsample)
        d2 = ((support.double()[:, None] - query.double()[:, :, None]) ** 2).sum(-1)
        near_boundary = ((d2 - radius**2).abs() < 1e-4 * max(1.0, radius**2)).any(-1)  # documented matmul tolerance
        ok = (idx.numpy() == ref).all(-1) | near_boundary.numpy()
        assert ok.all()


@pytest.mark.parametrize("call", [
    lambda: ops.furthest_point_sample(torch.zeros(1, 4, 2), 2),
    lambda: ops.furthest_point_sample(torch.zeros(1, 4, 3), 5),
    lambda: ops.furthest_point_sample(torch.zeros(1, 4, 3), 2, start=4),
    lambda: ops.ball_query(torch.zeros(1, 4, 3), torch.zeros(2, 4, 3), 0.1, 2),
    lambda: ops.ball_query(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), 0.1, 0),
])
def test_bad_op_arguments_are_our_data_error(call):
    with pytest.raises(DataError):
        call()


# --------------------------------------------------------------------------------------------- normalisation


@pytest.mark.timeout(60)
@FUZZ
@given(xyz=clouds(max_n=64))
def test_normalisation_is_centred_unit_or_rejected_by_check_points(xyz):
    try:
        check_points(xyz)
    except DataError:
        STATS["normalise/rejected"] += 1
        return
    out = normalise_unit_sphere(xyz)
    x = xyz.double()
    extent = (x.amax(1) - x.amin(1)).amax(-1)  # per cloud
    scale = x.abs().amax((1, 2))
    for b in range(xyz.shape[0]):
        if not torch.isfinite(out[b]).all():
            # the only way to a non-finite output: coordinates whose float32 sum or squared norm overflows
            assert not torch.isfinite(xyz[b].sum(0)).all() or not torch.isfinite(xyz[b].square().sum(-1)).all(), xyz[b]
            STATS["normalise/overflow"] += 1
        elif extent[b] == 0:
            STATS["normalise/zero_extent"] += 1  # constant cloud: see the xfail test below
        elif extent[b] > 1e-3 * scale[b] and 1e-15 < scale[b] < 1e15:  # a real extent, resolvable in float32
            assert out[b].norm(dim=-1).max() <= 1 + 1e-5
            assert out[b].double().mean(0).abs().max() < 1e-4
            assert abs(out[b].norm(dim=-1).max() - 1) < 1e-4
            STATS["normalise/ok"] += 1
        else:
            STATS["normalise/near_degenerate"] += 1


@pytest.mark.parametrize("value", [3.7, 0.1, -2.5e6, 0.0])
def test_constant_cloud_normalises_to_the_origin_or_is_rejected(value):
    xyz = torch.full((1, 100, 3), value)
    try:
        out = normalise_unit_sphere(xyz)
    except Captionless3DError:
        return
    assert bool((out == 0).all()), out[0, 0]


# --------------------------------------------------------------------------------------------- the encoder


@pytest.fixture(scope="module")
def encoder():
    from captionless3d.models import build_point_encoder

    torch.manual_seed(0)
    model = build_point_encoder("pointnext_s", embed_dim=8).eval()
    return model


@pytest.mark.timeout(300)
@settings(max_examples=int(os.environ.get("RELIABILITY_ENCODER_EXAMPLES", 30)), deadline=None, derandomize=True,
          database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_encoder_gives_finite_embedding_or_our_error_never_silent_nan(encoder, data):
    n = data.draw(st.sampled_from([1, 2, encoder.encoder.min_points if hasattr(encoder.encoder, "min_points") else 64,
                                   96]))
    xyz = data.draw(clouds(min_n=n, max_n=n, max_b=2), label="xyz")
    normalise = data.draw(st.booleans(), label="normalise first")
    if normalise:
        xyz = normalise_unit_sphere(xyz)
    elif bool((xyz.abs() > 1e6).any()):
        # raw coordinates up to 1e6 (e.g. millimetres) must work; far beyond, intermediate values overflow float32
        # and the embedding turns NaN silently: the known bug pinned by the xfail test below
        xyz = xyz.clamp(-1e6, 1e6)
    try:
        with torch.no_grad():
            emb = encoder(xyz)
    except Captionless3DError as exc:
        STATS[f"encoder/error:{type(exc).__name__}"] += 1
        return
    STATS["encoder/finite"] += 1
    assert emb.shape == (xyz.shape[0], 8)
    assert torch.isfinite(emb).all(), f"silent non-finite embedding for input with |x|max={xyz.abs().max()}"


def test_encoder_rejects_or_survives_coordinates_whose_differences_overflow(encoder):
    g = torch.Generator().manual_seed(0)
    xyz = (torch.rand(1, 96, 3, generator=g) * 2 - 1) * 3e38
    try:
        with torch.no_grad():
            emb = encoder(xyz)
    except Captionless3DError:
        return
    assert torch.isfinite(emb).all(), emb
