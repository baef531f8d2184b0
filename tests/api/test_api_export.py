"""Export: the trace-friendly point ops equal the model's, TorchScript / ONNX parity with PyTorch (dynamic batch),
safetensors round trip, config and model card."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from captionless3d.cli import main
from captionless3d.export import (
    ExportablePointEncoder,
    ball_query_export,
    export,
    fps_export,
    load_safetensors_encoder,
    reference_embeddings,
)
from captionless3d.models.ops import ball_query, furthest_point_sample

TOLERANCE = 1e-4


def _clouds(model, n: int = 10, seed: int = 1) -> torch.Tensor:
    """10 random clouds of the model's point count, each with its own offset and anisotropic scale (unnormalised)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, model.n_points, 3, generator=g) * (0.5 + torch.rand(n, 1, 3, generator=g))
    return pts + 3 * torch.randn(n, 1, 3, generator=g)


def test_export_ops_equal_the_model_ops():
    g = torch.Generator().manual_seed(0)
    xyz = torch.rand(3, 200, 3, generator=g)
    xyz[1, 50:60] = xyz[1, 10]  # duplicates: ties go to the lowest index in both
    assert torch.equal(fps_export(xyz, 64), furthest_point_sample(xyz, 64))
    query = torch.rand(3, 40, 3, generator=g) * 1.5  # some balls empty (outside the unit cube)
    for radius, nsample in ((0.1, 8), (0.25, 32), (0.05, 4)):
        assert torch.equal(ball_query_export(xyz, query, radius, nsample), ball_query(xyz, query, radius, nsample))
    assert torch.equal(ball_query_export(xyz[:, :5], query, 2.0, 8), ball_query(xyz[:, :5], query, 2.0, 8))  # k < nsample


def test_eager_wrapper_equals_pytorch(model):
    x = _clouds(model)
    wrapper = ExportablePointEncoder(model.encoder, model.n_points).eval()
    with torch.no_grad():
        diff = (wrapper(x) - reference_embeddings(model.encoder, x)).abs().max().item()
    assert diff <= TOLERANCE
    # the reference is exactly what the API computes for clouds of n_points points
    np.testing.assert_allclose(reference_embeddings(model.encoder, x).numpy(), model.encode_points(x.numpy()), atol=1e-6)


@pytest.fixture(scope="module")
def exported(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    export(world.ckpt, ["torchscript", "onnx"], out)
    export(world.ckpt, "safetensors", out)  # a later export into the same directory keeps the earlier files listed
    return out


def test_torchscript_matches_pytorch(model, exported, capsys):
    import warnings

    x = _clouds(model)
    ref = reference_embeddings(model.encoder, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still supported
        scripted = torch.jit.load(str(exported / "point_encoder.torchscript.pt"))
    with torch.no_grad():
        diff = (scripted(x) - ref).abs().max().item()
        diff3 = (scripted(x[:3]) - ref[:3]).abs().max().item()  # another batch size: the batch axis is dynamic
    with capsys.disabled():
        print(f"\nTorchScript vs PyTorch, 10 clouds x {model.n_points} points: max abs diff {diff:.2e} (batch 3: {diff3:.2e})")
    assert diff <= TOLERANCE and diff3 <= TOLERANCE
    with pytest.raises(Exception, match=rf"points must have shape \(batch, {model.n_points}, 3\)"):
        scripted(x[:, :64])  # the unrolled sampling is specific to n_points: other sizes are refused


def test_onnx_matches_pytorch_in_onnxruntime(model, exported, capsys):
    ort = pytest.importorskip("onnxruntime")
    x = _clouds(model)
    ref = reference_embeddings(model.encoder, x).numpy()
    session = ort.InferenceSession(str(exported / "point_encoder.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["points"]
    assert session.get_inputs()[0].shape[0] == "batch" and session.get_inputs()[0].shape[1:] == [model.n_points, 3]
    out = session.run(["embedding"], {"points": x.numpy()})[0]
    out1 = session.run(["embedding"], {"points": x[:1].numpy()})[0]
    diff = float(np.abs(out - ref).max())
    with capsys.disabled():
        print(f"\nONNX (onnxruntime {ort.__version__}) vs PyTorch, 10 clouds: max abs diff {diff:.2e}")
    assert out.shape == ref.shape and out1.shape == (1, model.teacher_dim)
    assert diff <= TOLERANCE and float(np.abs(out1 - ref[:1]).max()) <= TOLERANCE


def test_safetensors_config_and_model_card(model, world, exported):
    encoder, config = load_safetensors_encoder(exported)
    x = _clouds(model, 4)
    with torch.no_grad():
        assert torch.equal(encoder(x), model.encoder(x))
    from safetensors import safe_open

    with safe_open(str(exported / "point_encoder.safetensors"), "pt") as handle:
        assert handle.metadata()["teacher_id"] == model.teacher_id
    assert config["teacher_id"] == model.teacher_id and config["n_points"] == model.n_points
    assert config["input"]["shape"] == ["batch", model.n_points, 3] and config["embedding_dim"] == model.teacher_dim
    assert config["checkpoint_sha256"] == model.checkpoint_sha256
    assert config["files"] == {"onnx": "point_encoder.onnx", "safetensors": "point_encoder.safetensors",
                               "torchscript": "point_encoder.torchscript.pt"}
    card = (exported / "model_card.md").read_text()
    for needle in (model.teacher_id, model.data_fingerprint, "`avg`", "validation", "## Results",
                   "`point_encoder.onnx`", "`point_encoder.torchscript.pt`", "`point_encoder.safetensors`"):
        assert needle in card, needle


def test_model_card_includes_the_run_results(world, tmp_path, capsys):
    run_dir = world.ckpt.parent.parent
    summary = {"metrics": {"heldout": {"zeroshot/top1": 61.25, "retrieval/bg/gallery/s2i_r5": 12.5, "params": 1.2}}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    try:
        assert main(["export", "--ckpt", str(world.ckpt), "--format", "safetensors", "--out", str(tmp_path)]) == 0
    finally:
        (run_dir / "summary.json").unlink()
    assert "safetensors: wrote" in capsys.readouterr().out
    card = (tmp_path / "model_card.md").read_text()
    assert "| zeroshot/top1 | 61.25 |" in card and "| retrieval/bg/gallery/s2i_r5 | 12.50 |" in card
    assert "params" not in card.split("## Results")[1]


@pytest.mark.parametrize("name, overrides, n", [("pointnext_b", {}, 256), ("pointnext_s", {"in_channels": 4}, 128)])
def test_wrapper_backbone_equals_model_for_other_presets(name, overrides, n):
    """InvResMLP blocks (pointnext_b), a last stage that keeps several points, the height channel (in_channels 4)."""
    from captionless3d.data.pointcloud import normalise_unit_sphere
    from captionless3d.models import build_point_encoder

    torch.manual_seed(0)
    model = build_point_encoder(name, embed_dim=16, **overrides).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(-1.5, 1.5)  # negative gammas too
    x = torch.randn(3, n, 3) * torch.tensor([1.0, 0.6, 1.4])
    wrapper = ExportablePointEncoder(model, n)
    with torch.no_grad():
        p = normalise_unit_sphere(x)
        feats = p if model.encoder.in_channels == 3 else torch.cat([p, p[..., 1:2] - p[..., 1:2].amin(1, keepdim=True)], -1)
        ours, ref = wrapper._stages(p, feats), model.encoder(p)
        assert (ref - ref.mean(0)).abs().max() > 1e-3  # the clouds give different features
        assert (ours - ref).abs().max().item() <= 1e-5
        assert (wrapper(x) - reference_embeddings(model, x)).abs().max().item() <= TOLERANCE
