"""Triton point ops (``captionless3d.models.triton_ops``) against the pure-PyTorch ops, on CPU.

The kernels run in Triton's interpreter, which needs ``TRITON_INTERPRET=1`` before ``triton`` is first imported (its
standard library is built for one mode at import, and ``lightning``, imported by other tests, imports triton). So
in a normal test session ``test_interpreter_cases_in_a_subprocess`` runs this file again in a fresh process with
the variable set; there the kernel tests run and the compiled-mode tests skip (``TRITON_INTERPRET=1 pytest
tests/models/test_triton_ops.py`` does the same directly). Nothing leaks into other tests. The interpreter executes
each program in Python over numpy blocks, so the clouds are small and some tests shrink the block constants to
exercise several tiles / programs at small sizes.

Exactness: the interpreter computes in IEEE float32 without FMA, as the kernels do on a GPU
(``enable_fp_fusion=False``). FPS and kNN use the same direct differences as the PyTorch ops, so they must agree
bit for bit on any cloud. ``ops.ball_query`` uses a matrix-product expansion; the tests compare it on dyadic grids
(every distance exact, points exactly on the sphere included) and on float clouds whose radius is placed in a wide
gap of the pair distances.

What the interpreter cannot show is how the kernels compile for a GPU. ``test_kernels_compile_for_sm90`` compiles
every launch exactly as the host code issues it for an H100 (sm_90) with Triton's bundled ``ptxas``, no GPU needed,
and checks the PTX has no fused multiply-add.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import warnings

import pytest
import torch

from captionless3d.errors import ConfigError, DataError
from captionless3d.models import ops
from captionless3d.models import triton_ops as T

INTERPRETED = T.available() and T.interpreting()
_INTERP_TESTS: list[str] = []


def interp_only(fn):
    """A kernel test: runs where Triton is in interpreter mode (the subprocess), skips elsewhere."""
    _INTERP_TESTS.append(fn.__name__)
    reason = (f"triton does not import: {T.unavailable_reason()}" if not T.available() else
              "runs in the TRITON_INTERPRET=1 subprocess (test_interpreter_cases_in_a_subprocess)")
    return pytest.mark.skipif(not INTERPRETED, reason=reason)(fn)


compiled_only = pytest.mark.skipif(not T.available() or INTERPRETED,
                                   reason="needs triton imported without TRITON_INTERPRET")


@pytest.fixture(autouse=True)
def _registry_restored():
    yield
    ops.disable_cuda_ops()


_SUBPROCESS: dict[str, subprocess.Popen] = {}


@pytest.fixture(autouse=True, scope="module")
def _start_interpreter_subprocess(request):
    """Start the interpreter run of this file when the module's first test runs, so that it overlaps the other
    compiled-mode tests (mostly ``test_kernels_compile_for_sm90``); ``test_interpreter_cases_in_a_subprocess``, the
    last test, waits for it. Only when that test is selected and Triton is not already interpreting."""
    wanted = any(item.name == "test_interpreter_cases_in_a_subprocess" for item in request.session.items)
    if wanted and T.available() and not INTERPRETED:
        env = dict(os.environ, TRITON_INTERPRET="1")
        _SUBPROCESS["run"] = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    yield
    proc = _SUBPROCESS.pop("run", None)
    if proc is not None and proc.poll() is None:  # the waiting test did not run (e.g. -x stopped earlier)
        proc.kill()
        proc.wait()


def _rand(seed: int, B: int, N: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, N, 3, generator=g) * 2 - 1


def _grid(seed: int, B: int, N: int, cells: int, spacing: float) -> torch.Tensor:
    """Integer coordinates in [0, cells) times a power-of-two ``spacing``: every squared distance, and every term of
    ``ops.ball_query``'s matrix expansion, is exact in float32. Few cells give exact ties and duplicate points."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cells, (B, N, 3), generator=g).float() * spacing


# ------------------------------------------------------------------------------------------------------------- FPS
@interp_only
@pytest.mark.parametrize("start", [0, 7])
def test_fps_random_clouds_match_torch(start):
    xyz = _rand(0, 2, 100)  # N not a power of two (block 128, 28 padding lanes)
    got = T.furthest_point_sample(xyz, 30, start=start)
    assert got.dtype == torch.int64 and got.shape == (2, 30) and got.device == xyz.device
    assert torch.equal(got, ops.furthest_point_sample(xyz, 30, start=start))
    assert (got[:, 0] == start).all()


@interp_only
def test_fps_exact_ties_and_duplicates_npoint_equals_n():
    xyz = _grid(1, 1, 45, cells=3, spacing=0.25)  # 45 points on 27 cells: duplicates and many equal distances
    assert len({tuple(p) for p in xyz[0].tolist()}) < 45
    got = T.furthest_point_sample(xyz, 45, start=3)
    assert torch.equal(got, ops.furthest_point_sample(xyz, 45, start=3))
    # npoint = N: each distinct position once, then (every distance 0) the lowest index, 0, again and again
    distinct = len({tuple(p) for p in xyz[0].tolist()})
    assert len({tuple(xyz[0, i].tolist()) for i in got[0, :distinct]}) == distinct
    assert (got[0, distinct:] == 0).all()


def _tie_cloud() -> torch.Tensor:
    """Index 0 at the origin; indices 5 and 20 both at distance 1 (the farthest), every other point nearer. With 16-
    point tiles, 5 and 20 lie in different tiles; 17 and 20 (second cloud) in the same one."""
    a = torch.full((2, 40, 3), 0.0)
    a[:, 1:, 0] = torch.arange(1, 40) / 64  # nearer points along x, up to 39/64 < 1
    a[0, 5] = torch.tensor([1.0, 0.0, 0.0])
    a[0, 20] = torch.tensor([0.0, 1.0, 0.0])
    a[1, 17] = torch.tensor([0.0, 0.0, 1.0])
    a[1, 20] = torch.tensor([0.0, 1.0, 0.0])
    return a


@interp_only
@pytest.mark.parametrize("tiled", [False, True])
def test_fps_tie_goes_to_lowest_index_across_and_within_tiles(monkeypatch, tiled):
    if tiled:
        monkeypatch.setattr(T, "FPS_ON_CHIP_MAX", 32)
        monkeypatch.setattr(T, "FPS_TILE", 16)
    got = T.furthest_point_sample(_tie_cloud(), 3)
    assert got[:, 1].tolist() == [5, 17]
    assert torch.equal(got, ops.furthest_point_sample(_tie_cloud(), 3))


@interp_only
def test_fps_tiled_variant_matches_torch(monkeypatch):
    monkeypatch.setattr(T, "FPS_ON_CHIP_MAX", 32)  # clouds above 32 points take the tiled kernel
    monkeypatch.setattr(T, "FPS_TILE", 16)  # 40 points: 3 tiles, the last one partial
    xyz = torch.cat([_rand(2, 1, 40), _grid(3, 1, 40, cells=3, spacing=0.5)])
    got = T.furthest_point_sample(xyz, 16, start=4)
    assert torch.equal(got, ops.furthest_point_sample(xyz, 16, start=4))


@interp_only
def test_fps_non_contiguous_float64_batch1_and_npoint1():
    xyz = _rand(4, 1, 37).transpose(1, 2).contiguous().transpose(1, 2)  # (1, 37, 3), strides (111, 1, 37)
    assert not xyz.is_contiguous()
    ref = ops.furthest_point_sample(xyz.contiguous(), 37)
    assert torch.equal(T.furthest_point_sample(xyz, 37), ref)
    assert torch.equal(T.furthest_point_sample(xyz.double(), 37), ref)  # read as float32, as ops does
    assert T.furthest_point_sample(xyz, 1, start=36).tolist() == [[36]]


# ------------------------------------------------------------------------------------------------------ ball query
@interp_only
def test_ball_query_dyadic_grid_with_points_on_the_sphere():
    support = _grid(5, 2, 75, cells=8, spacing=0.125)
    query = torch.cat([support[:, :12], _grid(6, 2, 8, cells=8, spacing=0.125) + 4.0], dim=1)  # last 8: far away
    radius = 0.25  # = 2 grid steps: integer offsets (2,0,0) and permutations lie exactly on the sphere
    d2 = ((query[:, :, None] - support[:, None]) ** 2).sum(-1)
    assert (d2 == radius**2).sum() > 0  # the strict '<' is exercised
    got = T.ball_query(support, query, radius, 6)
    ref = ops.ball_query(support, query, radius, 6)
    assert got.dtype == torch.int64 and got.shape == (2, 20, 6)
    assert torch.equal(got, ref)
    counts = (d2 < radius**2).sum(-1)
    assert (counts >= 6).any() and ((counts > 0) & (counts < 6)).any()  # full and short balls
    assert (got[:, 12:] == 0).all() and (counts[:, 12:] == 0).all()  # empty balls are all zeros


@interp_only
def test_ball_query_random_floats_radius_in_a_gap():
    support, query = _rand(7, 2, 90), _rand(8, 2, 30)
    d2 = ((query[:, :, None].double() - support[:, None].double()) ** 2).sum(-1).flatten().sort().values
    window = d2[(d2 > 0.1) & (d2 < 0.3)]
    gaps = window[1:] - window[:-1]
    i = int(gaps.argmax())
    radius = math.sqrt(float(window[i] + window[i + 1]) / 2)
    assert float(gaps[i]) / 2 > 1e-5  # every pair is > 1e-5 from the sphere: float32 rounding cannot flip one
    got = T.ball_query(support, query, radius, 16)
    assert torch.equal(got, ops.ball_query(support, query, radius, 16))


@interp_only
@pytest.mark.parametrize("nsample", [5, 64])
def test_ball_query_several_tiles_and_programs(monkeypatch, nsample):
    monkeypatch.setattr(T, "BALL_QUERY_BLOCK_M", 4)  # 13 queries: 4 programs, the last one partial
    monkeypatch.setattr(T, "BALL_QUERY_BLOCK_N", 8)  # 50 points: 7 tiles; slots continue across tiles
    support = _grid(9, 1, 50, cells=4, spacing=0.25)  # duplicates: equal points all count, in index order
    query = support[:, 30:43]
    # nsample=5: most balls fill up early and the scan stops; nsample=64 > N: every ball is padded
    got = T.ball_query(support, query, 0.5, nsample)
    assert torch.equal(got, ops.ball_query(support, query, 0.5, nsample))


@interp_only
def test_ball_query_non_contiguous_inputs():
    support = _grid(10, 2, 40, cells=8, spacing=0.125)
    query = support[:, ::3]  # a strided view
    s_nc = support.transpose(0, 1).contiguous().transpose(0, 1)  # batch stride smaller than the point stride
    assert not query.is_contiguous() and not s_nc.is_contiguous()
    got = T.ball_query(s_nc, query, 0.3, 7)
    assert torch.equal(got, ops.ball_query(support, query.contiguous(), 0.3, 7))


# ------------------------------------------------------------------------------------------------------------- kNN
@interp_only
def test_knn_random_clouds_several_tiles(monkeypatch):
    monkeypatch.setattr(T, "KNN_BLOCK_M", 4)
    monkeypatch.setattr(T, "KNN_BLOCK_N", 8)  # k=5 -> K_PAD 8, tiles of 8: 3 tiles for 21 points, the last partial
    support, query = _rand(11, 1, 21), _rand(12, 1, 7)
    got = T.knn(support, query, 5)
    assert got.dtype == torch.int64 and got.shape == (1, 7, 5)
    assert torch.equal(got, ops.knn(support, query, 5))


@interp_only
def test_knn_exact_ties_duplicates_and_k_equals_n(monkeypatch):
    monkeypatch.setattr(T, "KNN_BLOCK_M", 4)
    monkeypatch.setattr(T, "KNN_BLOCK_N", 8)
    support = _grid(13, 1, 12, cells=2, spacing=0.5)  # 8 cells, 12 points: duplicates and many equal distances
    query = torch.cat([support[:, :3], _grid(14, 1, 2, cells=3, spacing=0.25)], dim=1)
    assert torch.equal(T.knn(support, query, 7), ops.knn(support, query, 7))  # ties by index, stable
    full = T.knn(support, query, 12)  # k = N (not a power of two): the whole support, sorted
    assert torch.equal(full, ops.knn(support, query, 12))
    assert (full.sort(-1).values == torch.arange(12)).all()


@interp_only
def test_knn_non_contiguous_query(monkeypatch):
    monkeypatch.setattr(T, "KNN_BLOCK_M", 2)
    monkeypatch.setattr(T, "KNN_BLOCK_N", 4)
    support = _rand(15, 1, 20)
    query = support[:, 1::4]  # 5 queries, strided
    assert torch.equal(T.knn(support, query, 3), ops.knn(support, query.contiguous(), 3))


# ---------------------------------------------------------------------------------------------- errors and devices
def test_bad_arguments_name_the_op():
    x = torch.rand(2, 10, 3)
    cases = [
        (lambda: T.furthest_point_sample(x, 11), "furthest_point_sample: npoint=11"),
        (lambda: T.furthest_point_sample(x, 0), "npoint=0"),
        (lambda: T.furthest_point_sample(x, 3, start=10), "start=10"),
        (lambda: T.furthest_point_sample(x[..., :2], 3), r"furthest_point_sample expects xyz of shape \(B, N, 3\)"),
        (lambda: T.furthest_point_sample(x[0], 3), r"got \(10, 3\)"),
        (lambda: T.ball_query(x, x, 0.1, 0), "ball_query: nsample=0"),
        (lambda: T.ball_query(x, x[:1], 0.1, 4), "batch sizes differ"),
        (lambda: T.ball_query(x, x[..., :2], 0.1, 4), "ball_query expects query of shape"),
        (lambda: T.knn(x, x, 11), "knn: k=11"),
        (lambda: T.knn(x, x, 0), "k=0"),
        (lambda: T.knn(x.reshape(2, 30), x, 1), "knn expects support of shape"),
    ]
    for fn, msg in cases:
        with pytest.raises(DataError, match=msg):
            fn()


@compiled_only
def test_cpu_tensor_without_interpreter_is_a_config_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.rand(1, 8, 3)
    for fn, name in [(lambda: T.furthest_point_sample(x, 2), "furthest_point_sample"),
                     (lambda: T.ball_query(x, x, 0.1, 2), "ball_query"), (lambda: T.knn(x, x, 2), "knn")]:
        with pytest.raises(ConfigError, match=rf"triton_ops.{name}: got a tensor on cpu.*CUDA.*TRITON_INTERPRET=1"):
            fn()
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # too late: triton is imported already
    with pytest.raises(ConfigError, match="TRITON_INTERPRET=1 is set, but it was set after 'triton' was imported"):
        T.knn(x, x, 2)


def test_triton_missing_is_a_config_error(monkeypatch):
    monkeypatch.setattr(T, "triton", None)
    monkeypatch.setattr(T, "_TRITON_IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    assert not T.available()
    with pytest.raises(ConfigError, match=r"triton_ops.knn: .*'triton' package.*No module named"):
        T.knn(torch.rand(1, 4, 3), torch.rand(1, 2, 3), 2)
    with pytest.raises(ConfigError, match=r"model.ops_backend='triton' needs the 'triton' package"):
        ops.enable_triton_ops()
    assert ops.cuda_ops_source() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ops.enable_auto_ops() is None  # no GPU: the PyTorch ops, silently
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.warns(RuntimeWarning, match="auto.*pure-PyTorch point ops.*triton does not import"):
        assert ops.enable_auto_ops() is None
    assert ops.cuda_ops_source() is None


# -------------------------------------------------------------------------------------------- backend and dispatch
def test_backends_need_a_gpu_here():
    from captionless3d.models import build_point_encoder
    from captionless3d.models.factory import OPS_BACKENDS

    assert "triton" in OPS_BACKENDS and "auto" in OPS_BACKENDS
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(ConfigError, match=r"ops_backend='triton'"):
        build_point_encoder(ops_backend="triton")
    assert ops.cuda_ops_source() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto without a GPU: the PyTorch ops, no warning
        build_point_encoder(ops_backend="auto")
    assert ops.cuda_ops_source() is None


@interp_only
def test_self_check_passes_and_catches_a_wrong_kernel(monkeypatch):
    cpu = torch.device("cpu")
    assert ops._triton_self_check(cpu) is None  # also the kNN default blocks (16 queries x 64 points, one tile)
    # a wrong kNN kernel (stand-ins built on the PyTorch ops: the interpreter is slow, and the kernels ran above)
    monkeypatch.setattr(T, "furthest_point_sample", ops.furthest_point_sample)
    monkeypatch.setattr(T, "ball_query", ops.ball_query)
    monkeypatch.setattr(T, "knn", lambda s, q, k: ops.knn(s, q, k).flip(-1))
    assert ops._triton_self_check(cpu) == "indices differ from the PyTorch ops in knn"
    monkeypatch.setattr(T, "furthest_point_sample", lambda *a: 1 / 0)  # a kernel that raises (compiler, driver)
    assert ops._triton_self_check(cpu).startswith("ZeroDivisionError")
    # auto on a "GPU" whose self-check fails: a warning and the PyTorch ops
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ops, "_triton_self_check", lambda device: "indices differ from the PyTorch ops in knn")
    with pytest.warns(RuntimeWarning, match="indices differ"):
        assert ops.enable_auto_ops() is None
    with pytest.raises(ConfigError, match="failed their self-check"):
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "stand-in GPU")
        ops.enable_triton_ops()


@interp_only
def test_model_on_triton_backend_matches_torch(monkeypatch):
    """A tiny PointNeXt, forward and backward, with the Triton kernels (interpreted) standing in for the GPU path:
    the dispatch device type is patched to ``cpu``; the self-check (tested above) is stubbed out to save time."""
    from captionless3d.models import build_point_encoder
    from captionless3d.models.factory import apply_ops_backend

    checked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ops, "_triton_self_check", lambda device: checked.append(device.type))
    calls = {"fps": 0, "ball_query": 0, "knn": 0}
    for name, attr in [("fps", "furthest_point_sample"), ("ball_query", "ball_query"), ("knn", "knn")]:
        real = getattr(T, attr)

        def spy(*args, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(T, attr, spy)
    tiny = dict(name="pointnext_s", embed_dim=16, head_mlps=(32,), head_dropout=0.0, width=8, blocks=(1, 2, 1),
                strides=(1, 2, 1), nsample=8)
    torch.manual_seed(0)
    a = build_point_encoder(**tiny)
    b = build_point_encoder(**tiny)
    b.load_state_dict(a.state_dict())
    apply_ops_backend(a, "auto")  # auto on a GPU where the self-check passes: the Triton kernels
    assert ops.cuda_ops_source() == "triton" and checked == ["cuda"]
    apply_ops_backend(a, "torch")
    assert ops.cuda_ops_source() == "triton"  # torch leaves registered kernels alone (as with cuda)
    ops.disable_cuda_ops()
    apply_ops_backend(b, "triton")
    assert ops.cuda_ops_source() == "triton" and checked == ["cuda", "cuda"]
    monkeypatch.setattr(T, "KNN_BLOCK_M", 2)  # faster to interpret
    monkeypatch.setattr(T, "KNN_BLOCK_N", 4)
    x = _rand(16, 2, 32)

    def run(model):
        model.zero_grad(set_to_none=True)
        y = model(x)
        y.square().sum().backward()
        return y.detach(), [p.grad.clone() for p in model.parameters()]

    y_ref, g_ref = run(a)
    monkeypatch.setattr(ops, "_CUDA_DEVICE_TYPES", ("cpu",))  # pretend CPU tensors live on the GPU
    y, g = run(b)
    assert calls == {"fps": 1, "ball_query": 2, "knn": 0}  # one SA stage (FPS + ball query), one InvResMLP
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    assert all(torch.allclose(p, q, rtol=1e-4, atol=1e-5) for p, q in zip(g, g_ref))
    s, q = _rand(17, 1, 12), _rand(18, 1, 3)
    assert torch.equal(ops.knn(s, q, 4), T.knn(s, q, 4)) and calls["knn"] == 2  # ops.knn dispatches too
    assert torch.equal(ops.furthest_point_sample(x, 5, start=3), T.furthest_point_sample(x, 5, start=3))


def test_fps_dispatch_falls_back_for_a_start_the_kernel_lacks(monkeypatch):
    """The compiled OpenPoints kernels always start at 0: their wrappers answer None for another start, and the
    dispatch then runs the PyTorch loop."""
    import sys
    import types

    calls = []
    fake = types.ModuleType("pointnext")
    fake.ops = types.ModuleType("pointnext.ops")
    fake.ops.furthest_point_sample = lambda xyz, n: calls.append(n) or torch.zeros(xyz.shape[0], n, dtype=torch.int32)
    fake.ops.ball_query = lambda *a: None
    monkeypatch.setitem(sys.modules, "pointnext", fake)
    monkeypatch.setitem(sys.modules, "pointnext.ops", fake.ops)
    x = _rand(19, 1, 20)
    ref = ops.furthest_point_sample(x, 4, start=2)
    assert ops.enable_cuda_ops(require_device=False) == "pointnext"
    monkeypatch.setattr(ops, "_CUDA_DEVICE_TYPES", ("cpu",))
    assert ops.furthest_point_sample(x, 4).tolist() == [[0, 0, 0, 0]]  # start 0: the (stand-in) kernel
    assert torch.equal(ops.furthest_point_sample(x, 4, start=2), ref)  # start 2: the PyTorch loop
    assert calls == [4]


# ------------------------------------------------------------------------------------------- the GPU benchmark
def _bench():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_pointnext_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_pointnext_gpu", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_arguments_and_cases():
    bench = _bench()
    args = bench.parse_args([])
    assert (args.device, args.quick, args.cpu_smoke, args.budget_s, args.json) == ("cuda", False, False, 270.0, None)
    assert bench.parse_args(["--cpu-smoke"]).device == "cpu"
    # the configurations: train and forward at 32 x 2048 and 128 x 1024, fp32 and bf16
    wanted = {(m, B, N, p) for m in ("train", "fwd") for B, N in ((32, 2048), (128, 1024)) for p in ("fp32", "bf16")}
    assert wanted <= set(bench.MODEL_CASES)
    assert any(N > T.FPS_ON_CHIP_MAX for _, _, N, _ in bench.FPS_CASES)  # the tiled kernel is timed too
    assert {"fps", "ball", "knn", "model", "parity"} <= set(bench.FULL) and set(bench.FULL) == set(bench.SMOKE)
    if torch.cuda.is_available():
        return
    with pytest.raises(SystemExit, match="no CUDA device visible; use --cpu-smoke"):
        bench.main([])
    if not INTERPRETED:
        with pytest.raises(SystemExit, match="--cpu-smoke needs Triton in interpreter mode"):
            bench.main(["--cpu-smoke"])


@interp_only
def test_gpu_benchmark_cpu_smoke(tmp_path, monkeypatch, capsys):
    """The whole benchmark script at tiny sizes (one model configuration here, to save time): every section runs,
    the Triton backend gives the PyTorch indices, and the settings it changes are restored."""
    import json

    bench = _bench()
    monkeypatch.setitem(bench.SMOKE, "model", [("train", 2, 16, "bf16")])
    bench.main(["--cpu-smoke", "--json", str(tmp_path / "b.json")])
    res = json.loads((tmp_path / "b.json").read_text())
    assert set(res["parity"]["backends"]) == {"torch", "triton"} or "cuda" in res["parity"]["backends"]
    par = res["parity"]["triton_vs_torch"]
    assert par["fps"]["identical_sequences"] == par["fps"]["clouds"] == 2
    assert par["fps_large"]["triton_kernel"] == "tiled" and par["fps_large"]["identical_sequences"] == 2
    assert all(r["identical_rows"] + r["mismatches_at_boundary"] == r["rows"] for r in par["ball_query"])
    assert par["knn"]["identical_rows"] == par["knn"]["rows"]
    timed = {(r["op"], r["backend"]) for r in res["ops"] if "ms" in r}
    assert timed == {(op, b) for op in ("fps", "ball_query", "knn") for b in ("torch", "triton")}
    assert {r["backend"] for r in res["throughput"] if r.get("samples_per_s")} == {"torch", "triton"}
    assert set(res["summary"]["train 2x16 bf16 samples/s"]) == {"torch", "triton"}
    assert '"summary"' in capsys.readouterr().out  # printed as JSON lines
    assert T.FPS_ON_CHIP_MAX == 16384 and T.KNN_BLOCK_N == 64  # smoke block sizes restored
    assert ops._CUDA_DEVICE_TYPES == ("cuda",) and ops.cuda_ops_source() is None


# ----------------------------------------------------------------------------------------- compiled for a GPU
@compiled_only
def test_kernels_compile_for_sm90(monkeypatch):
    """Every launch the host code issues (recorded, not run: the interpreter would take minutes at these sizes),
    compiled for sm_90 through ptxas, with the launch's own block sizes, warps and options; no FMA in the PTX.
    A control compile with FMA contraction enabled does contain FMAs, so the check can fail."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia.compiler import CUDABackend
        from triton.compiler import ASTSource
    except Exception as exc:  # noqa: BLE001 - Triton without its NVIDIA backend
        pytest.skip(f"no Triton NVIDIA backend: {exc}")
    del CUDABackend
    launches = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kw: launches.append((self.name, grid, args, kw))

    monkeypatch.setattr(T, "_kernel", lambda name, interpret: Recorder(name))
    monkeypatch.setattr(T, "_launcher", lambda op, *tensors: False)  # CPU tensors stand in for CUDA ones
    T.furthest_point_sample(torch.rand(2, 2048, 3), 1024)
    T.furthest_point_sample(torch.rand(1, T.FPS_ON_CHIP_MAX, 3), 8)
    T.furthest_point_sample(torch.rand(1, T.FPS_ON_CHIP_MAX + 1, 3), 8)  # the tiled variant
    T.ball_query(torch.rand(2, 2048, 3), torch.rand(2, 512, 3), 0.15, 32)
    T.knn(torch.rand(2, 1024, 3), torch.rand(2, 64, 3), 32)
    assert [n for n, *_ in launches] == ["fps", "fps", "fps_tiled", "ball_query", "knn"]

    target = GPUTarget("cuda", 90, 32)
    options_keys = {"num_warps", "enable_fp_fusion"}

    def compile_launch(name, args, kw, **override):
        fn = T._KERNEL_FNS[name][0]
        jit = triton.runtime.jit.JITFunction(fn)
        names = jit.arg_names
        consts = {k: v for k, v in kw.items() if k not in options_keys}
        sig = {}
        for arg_name, value in zip(names, args):
            if isinstance(value, torch.Tensor):
                sig[arg_name] = {torch.float32: "*fp32", torch.int64: "*i64"}[value.dtype]
            elif isinstance(value, float):
                sig[arg_name] = "fp32"
            else:
                assert isinstance(value, int) and abs(value) < 2**31
                sig[arg_name] = "i32"
        sig.update({k: "constexpr" for k in consts})
        assert set(sig) == set(names), (name, set(names) - set(sig))
        opts = {k: v for k, v in kw.items() if k in options_keys} | override
        return triton.compile(ASTSource(jit, sig, consts), target=target, options=opts)

    for name, _grid, args, kw in launches:
        assert kw["enable_fp_fusion"] is False, name
        if name == "fps" and kw["BLOCK"] > 2048:
            continue  # same code as the 2048-point launch, only more registers: keep the test fast
        ptx = compile_launch(name, args, kw).asm["ptx"]
        assert "fma.rn.f32" not in ptx, name
    name, _, args, kw = launches[0]
    assert "fma.rn.f32" in compile_launch(name, args, kw, enable_fp_fusion=True).asm["ptx"]


# last, so that the subprocess started by _start_interpreter_subprocess overlaps the tests above
@compiled_only
def test_interpreter_cases_in_a_subprocess():
    proc = _SUBPROCESS.get("run")
    assert proc is not None
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-8000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= len(_INTERP_TESTS), out[-3000:]  # they ran, not skipped
