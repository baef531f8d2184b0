"""Point ops against brute-force Python references of OpenPoints' CUDA kernels; their export mode (traceable path)
against the CPU path."""
from __future__ import annotations

import pytest
import torch

from captionless3d.models.ops import (
    ball_query,
    export_mode,
    furthest_point_sample,
    gather_points,
    group_points,
    in_export_mode,
    knn,
)


def _fps_reference(xyz: torch.Tensor, npoint: int, start: int = 0) -> list[list[int]]:
    out = []
    for cloud in xyz.double().tolist():
        n = len(cloud)
        dist = [1e10] * n
        idx = [start]
        far = start
        for _ in range(1, npoint):
            fx, fy, fz = cloud[far]
            best, besti = -1.0, 0
            for k, (x, y, z) in enumerate(cloud):
                d = (x - fx) ** 2 + (y - fy) ** 2 + (z - fz) ** 2
                dist[k] = min(dist[k], d)
                if dist[k] > best:
                    best, besti = dist[k], k
            far = besti
            idx.append(far)
        out.append(idx)
    return out


def _ball_query_reference(support, query, radius, nsample) -> list:
    r2 = radius * radius
    out = []
    for s_cloud, q_cloud in zip(support.double().tolist(), query.double().tolist()):
        rows = []
        for qx, qy, qz in q_cloud:
            idx = [0] * nsample
            cnt = 0
            for k, (x, y, z) in enumerate(s_cloud):
                if (qx - x) ** 2 + (qy - y) ** 2 + (qz - z) ** 2 < r2:
                    if cnt == 0:
                        idx = [k] * nsample
                    idx[cnt] = k
                    cnt += 1
                    if cnt >= nsample:
                        break
            rows.append(idx)
        out.append(rows)
    return out


def _clouds(seed: int, B: int, N: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, N, 3, generator=g) * 2 - 1


@pytest.mark.parametrize("start", [0, 5])
def test_fps_matches_reference(start):
    xyz = _clouds(0, 3, 60)
    got = furthest_point_sample(xyz, 17, start=start)
    assert got.dtype == torch.long and got.shape == (3, 17)
    assert got.tolist() == _fps_reference(xyz, 17, start)


def test_fps_edge_cases():
    xyz = _clouds(1, 2, 8)
    assert furthest_point_sample(xyz, 1).tolist() == [[0], [0]]
    full = furthest_point_sample(xyz, 8)
    assert sorted(full[0].tolist()) == list(range(8))  # all distinct when npoint == N
    with pytest.raises(ValueError):
        furthest_point_sample(xyz, 9)


def _safe_radius(support, query, radius):
    """Keep the test away from pairs within float rounding of the sphere boundary."""
    d2 = torch.cdist(query.double(), support.double()) ** 2
    assert (d2 - radius**2).abs().min() > 1e-5


@pytest.mark.parametrize("nsample", [1, 4, 16])
def test_ball_query_matches_reference(nsample):
    support = _clouds(2, 3, 80)
    query = support[:, ::3].contiguous()
    radius = 0.45
    _safe_radius(support, query, radius)
    got = ball_query(support, query, radius, nsample)
    assert got.dtype == torch.long and got.shape == (3, query.shape[1], nsample)
    assert got.tolist() == _ball_query_reference(support, query, radius, nsample)


def test_ball_query_empty_ball_is_zero_and_short_ball_padded():
    support = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [1.05, 0, 0], [5, 5, 5]]])
    query = torch.tensor([[[1.0, 0, 0], [-9, -9, -9], [5, 5, 5]]])
    got = ball_query(support, query, 0.1, 4)
    assert got.tolist() == [[[1, 2, 1, 1], [0, 0, 0, 0], [3, 3, 3, 3]]]
    # nsample larger than the support set
    got = ball_query(support, query, 100.0, 6)
    assert got[0, 0].tolist() == [0, 1, 2, 3, 0, 0]


def test_ball_query_chunking_is_invisible(monkeypatch):
    import captionless3d.models.ops as ops

    support = _clouds(3, 4, 70)
    query = support[:, ::2].contiguous()
    full = ball_query(support, query, 0.5, 8)
    monkeypatch.setattr(ops, "BALL_QUERY_CHUNK_ELEMS", 100)  # forces chunks over the batch and the queries
    assert torch.equal(ops.ball_query(support, query, 0.5, 8), full)


def test_gather_and_group_values_and_grads():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[4, 0], [1, 1]])
    g = gather_points(x, idx)
    assert torch.equal(g[0, 0], x[0, 4]) and torch.equal(g[1, 1], x[1, 1])
    nbr = torch.tensor([[[0, 1], [2, 2]], [[3, 4], [4, 4]]])
    grouped = group_points(x, nbr)
    assert grouped.shape == (2, 2, 2, 3)
    assert torch.equal(grouped[1, 1, 0], x[1, 4])
    grouped.sum().backward()
    assert x.grad[1, 4].tolist() == [3.0, 3.0, 3.0]  # used three times


@pytest.mark.parametrize("block", [1, 7, 33])
def test_ball_query_blocked_scan_is_invisible(monkeypatch, block):
    """Queries leave the blocked scan as soon as they have nsample neighbours; the result must not change."""
    import captionless3d.models.ops as ops

    support = _clouds(8, 3, 90)
    query = support[:, ::3].contiguous()
    _safe_radius(support, query, 0.5)
    expected = _ball_query_reference(support, query, 0.5, 5)
    monkeypatch.setattr(ops, "BALL_QUERY_BLOCK", block)
    assert ops.ball_query(support, query, 0.5, 5).tolist() == expected
    monkeypatch.setattr(ops, "BALL_QUERY_CHUNK_ELEMS", 4 * block)  # a few queries per chunk as well
    assert ops.ball_query(support, query, 0.5, 5).tolist() == expected


def test_fps_groups_of_clouds_are_invisible(monkeypatch):
    import captionless3d.models.ops as ops

    xyz = _clouds(7, 5, 50)
    full = ops.furthest_point_sample(xyz, 12)
    monkeypatch.setattr(ops, "FPS_BLOCK_POINTS", 60)  # one cloud per group
    assert torch.equal(ops.furthest_point_sample(xyz, 12), full)
    assert full.tolist() == _fps_reference(xyz, 12)


def test_ball_query_gpu_chunking_gives_the_same_result():
    """On a GPU the whole support is one block and several clouds share a GEMM; the same code path on CPU tensors."""
    import captionless3d.models.ops as ops

    support = _clouds(8, 3, 90)
    query = support[:, ::3].contiguous()
    expected = ops.ball_query(support, query, 0.5, 5)
    s_aug, q_aug, thr = ops._ball_operands(support, query, float(torch.tensor(0.5, dtype=torch.float32) ** 2))
    out = torch.empty_like(expected)
    for chunk in (90 * 30 * 3, 200):  # all clouds in one GEMM, and chunks of a few queries
        ops._ball_query_chunks(s_aug, q_aug, thr, torch.arange(1.0, 6.0), out, block=90, chunk_elems=chunk)
        assert torch.equal(out, expected)


def _knn_reference(support, query, k) -> list:
    """Python loops: sort each query's (squared distance, index) pairs; exact ties go to the lower index."""
    out = []
    for s, q in zip(support.tolist(), query.tolist()):
        rows = []
        for qp in q:
            d = [(sum((a - b) ** 2 for a, b in zip(qp, sp)), j) for j, sp in enumerate(s)]
            rows.append([j for _, j in sorted(d)[:k]])
        out.append(rows)
    return out


@pytest.mark.parametrize("k", [1, 5, 37])
def test_knn_matches_reference(k):
    support = _clouds(3, 2, 37)
    query = support[:, :9] + 0.01
    assert knn(support, query, k).tolist() == _knn_reference(support.double(), query.double(), k)


def test_knn_exact_ties_and_duplicates_go_to_the_lower_index(monkeypatch):
    import captionless3d.models.ops as ops

    # integer grid: every squared distance is exact, many are tied; a duplicated point ties at distance 0
    g = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(1, 27, 3)
    support = torch.cat([g, g[:, 13:14]], dim=1)  # index 27 duplicates the centre (index 13)
    query = support[:, [0, 13, 26]]
    idx = knn(support, query, 10)
    assert idx.tolist() == _knn_reference(support, query, 10)
    assert idx[0, 1, :2].tolist() == [13, 27]
    monkeypatch.setattr(ops, "KNN_CHUNK_ELEMS", 28)  # one query per chunk: chunking is invisible
    assert torch.equal(knn(support, query, 10), idx)
    strided = torch.cat([support, support], dim=-1)[..., :3]  # same values, not contiguous
    assert not strided.is_contiguous() and torch.equal(knn(strided, query, 10), idx)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ball_query(torch.zeros(2, 10, 2), torch.zeros(2, 3, 3), 0.1, 4), r"ball_query expects \(B, N, 3\)"),
        (lambda: ball_query(torch.zeros(2, 10, 3), torch.zeros(3, 3, 3), 0.1, 4), "batch sizes differ"),
        (lambda: ball_query(torch.zeros(2, 10, 3), torch.zeros(2, 3, 3), 0.1, 0), "nsample=0"),
        (lambda: furthest_point_sample(torch.zeros(2, 10, 3), 11), r"npoint=11 must be in \[1, N=10\]"),
        (lambda: furthest_point_sample(torch.zeros(2, 10, 3), 4, start=10), r"start=10 must be in \[0, N=10\)"),
        (lambda: furthest_point_sample(torch.zeros(10, 3), 4), r"furthest_point_sample expects \(B, N, 3\)"),
        (lambda: knn(torch.zeros(2, 10, 3), torch.zeros(2, 3, 2), 4), r"knn expects \(B, N, 3\)"),
        (lambda: knn(torch.zeros(2, 10, 3), torch.zeros(3, 3, 3), 4), "knn: support and query batch sizes differ"),
        (lambda: knn(torch.zeros(2, 10, 3), torch.zeros(2, 3, 3), 11), r"knn: k=11 must be in \[1, N=10\]"),
        (lambda: knn(torch.zeros(2, 10, 3), torch.zeros(2, 3, 3), 0), r"knn: k=0"),
    ],
)
def test_bad_arguments_name_the_op_and_the_problem(call, match):
    from captionless3d.errors import DataError

    with pytest.raises(DataError, match=match):
        call()


def test_export_mode_ops_equal_the_cpu_ops():
    """The traceable path gives the CPU path's indices exactly: FPS with duplicates (ties to the lowest index) and
    another start, ball query with empty and short balls (and k < nsample), kNN with exact ties."""
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(3, 200, 3, generator=g)
    xyz[1, 50:60] = xyz[1, 10]
    query = torch.rand(3, 40, 3, generator=g) * 1.5  # some balls empty (outside the unit cube)
    grid = torch.stack(torch.meshgrid(*[torch.arange(3.0)] * 3, indexing="ij"), -1).reshape(1, 27, 3)
    support = torch.cat([grid, grid[:, 13:14]], dim=1).expand(2, -1, -1)  # exact, tied distances and a duplicate
    calls = [
        lambda: furthest_point_sample(xyz, 64),
        lambda: furthest_point_sample(xyz, 64, start=7),
        lambda: furthest_point_sample(xyz[:, :9], 9),
        *[lambda r=r, k=k: ball_query(xyz, query, r, k) for r, k in ((0.1, 8), (0.25, 32), (0.05, 4))],
        lambda: ball_query(xyz[:, :5], query, 2.0, 8),  # k < nsample
        *[lambda k=k: knn(support, support[:, [0, 13, 26]], k) for k in (1, 10, 28)],
    ]
    for i, call in enumerate(calls):
        expected = call()
        with export_mode():
            assert in_export_mode()
            got = call()
        assert got.dtype == expected.dtype and torch.equal(got, expected), i
    with export_mode():  # and the Python references directly
        assert furthest_point_sample(xyz[:1, :60], 17, start=5).tolist() == _fps_reference(xyz[:1, :60], 17, 5)
        assert (knn(support, support[:, [0, 13, 26]], 10).tolist()
                == _knn_reference(support, support[:, [0, 13, 26]], 10))


def test_export_mode_is_per_thread_nests_and_is_on_while_tracing():
    import threading
    import warnings

    assert not in_export_mode()
    seen = []
    with export_mode():
        with export_mode():
            pass
        assert in_export_mode()  # the inner block restored the outer setting
        worker = threading.Thread(target=lambda: seen.append(in_export_mode()))
        worker.start()
        worker.join()
    assert seen == [False] and not in_export_mode()

    def scaled(x: torch.Tensor) -> torch.Tensor:
        return x * (2.0 if in_export_mode() else 1.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
        traced = torch.jit.trace(scaled, (torch.ones(2),))
    assert traced(torch.ones(2)).tolist() == [2.0, 2.0] and not in_export_mode()
