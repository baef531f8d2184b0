"""Export: the model's own forward in export mode equals its CPU path, TorchScript / ONNX parity with PyTorch (dynamic
batch) for the trained PointNeXt and for every other backbone kind, clear refusals, safetensors round trip, config and
model card. (The export-mode point ops themselves: tests/models/test_ops.py.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from api_world import machine_paths_in

from captionless3d.cli import main
from captionless3d.errors import ConfigError
from captionless3d.export import (
    ExportablePointEncoder,
    export,
    export_onnx,
    export_torchscript,
    load_safetensors_encoder,
    reference_embeddings,
)
from captionless3d.models import build_point_encoder, export_mode

TOLERANCE = 1e-4


def _clouds(model, n: int = 10, seed: int = 1) -> torch.Tensor:
    """10 random clouds of the model's point count, each with its own offset and anisotropic scale (unnormalised)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, model.n_points, 3, generator=g) * (0.5 + torch.rand(n, 1, 3, generator=g))
    return pts + 3 * torch.randn(n, 1, 3, generator=g)


def test_eager_wrapper_equals_pytorch(model):
    x = _clouds(model)
    wrapper = ExportablePointEncoder(model.encoder, model.n_points).eval()
    with torch.no_grad():
        diff = (wrapper(x) - reference_embeddings(model.encoder, x)).abs().max().item()
    assert diff <= TOLERANCE
    # the reference is exactly what the API computes for clouds of n_points points
    np.testing.assert_allclose(reference_embeddings(model.encoder, x).numpy(), model.encode_points(x.numpy()),
                               atol=1e-6)


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
        print(f"\nTorchScript vs PyTorch, 10 clouds x {model.n_points} points: max abs diff {diff:.2e} (batch 3: "
              f"{diff3:.2e})")
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


def test_exported_files_hold_no_path_of_the_exporting_machine(world, exported, tmp_path):
    """config.json, the model card, the weights and both graphs: no absolute path of this machine, also when the run
    directory's results cite the checkpoint by its absolute path (as the training run's results.md does)."""
    assert machine_paths_in(exported, world.root) == []
    assert json.loads((exported / "config.json").read_text())["checkpoint"] == world.ckpt.name
    results = world.ckpt.parent.parent / "results" / "heldout" / "results.md"
    results.parent.mkdir(parents=True)
    selected = world.ckpt.parent / "epoch=3-step=40.ckpt"  # the file Lightning selected, as results.md cites it
    results.write_text(f"# heldout\n\n**Protocol.** test split. checkpoint: {selected}\n")
    try:
        export(world.ckpt, "safetensors", tmp_path)
    finally:
        results.unlink()
        results.parent.rmdir()
        results.parent.parent.rmdir()
    card = (tmp_path / "model_card.md").read_text()
    assert "checkpoint: ./outputs/run/checkpoints/epoch=3-step=40.ckpt" in card  # the run directory, made portable
    assert machine_paths_in(tmp_path, world.root) == []


def _random_model(name: str, n: int, **overrides) -> torch.nn.Module:
    """A small encoder in eval mode whose BatchNorm statistics are those of random clouds of ``n`` points (so every
    layer sees unit-scale activations and different clouds give different features), gammas in [-1.5, 1.5]."""
    from captionless3d.data.pointcloud import normalise_unit_sphere

    torch.manual_seed(0)
    model = build_point_encoder(name, embed_dim=16, **overrides)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.momentum = 1.0  # the running statistics become those of the one calibration batch
    with torch.no_grad():
        model.train()(normalise_unit_sphere(torch.randn(8, n, 3) * (0.2 + torch.rand(8, 1, 3))))
    for bn in norms:
        bn.momentum = 0.1
        bn.weight.data.uniform_(-1.5, 1.5)
    return model.eval()


OTHER_BACKBONES = [("pointnet2_ssg_small", {}), ("pointbert_small", {}),
                   ("openshape_pointbert_b32_small", {"constant_rgb": 0.4})]


@pytest.mark.parametrize("name, overrides, n", [("pointnext_b", {}, 256), ("pointnext_s", {"in_channels": 4}, 128),
                                                *[(name, overrides, 128) for name, overrides in OTHER_BACKBONES]])
def test_export_mode_forward_equals_the_cpu_forward(name, overrides, n):
    """InvResMLP blocks (pointnext_b), a last stage that keeps several points, the height channel (in_channels 4), and
    the other backbone kinds (ball query, kNN grouping, xyz + constant rgb): the model's forward in export mode."""
    from captionless3d.data.pointcloud import normalise_unit_sphere

    model = _random_model(name, n, **overrides)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, n, 3, generator=g) * (0.2 + torch.rand(3, 1, 3, generator=g))  # per-cloud anisotropic scale
    wrapper = ExportablePointEncoder(model, n)
    with torch.no_grad():
        p = normalise_unit_sphere(x)
        ref = model.encoder(p)
        with export_mode():
            ours = model.encoder(p)
        scale = max(1.0, ref.abs().max().item())  # float32 rounding grows with the features' magnitude
        assert (ref - ref.mean(0)).abs().max() > 1e-3 * scale  # the clouds give different features
        assert (ours - ref).abs().max().item() <= 1e-5 * scale, ((ours - ref).abs().max().item(), scale)
        assert (wrapper(x) - reference_embeddings(model, x)).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("name, overrides", OTHER_BACKBONES)
def test_other_backbones_export_to_torchscript_and_onnx(name, overrides, tmp_path, capsys):
    """PointNet++, Point-BERT and OpenShape's PointPatchTransformer go through the same traced forward."""
    import warnings

    ort = pytest.importorskip("onnxruntime")
    n = 128
    model = _random_model(name, n, **overrides)
    x = torch.randn(5, n, 3) * torch.tensor([1.0, 0.6, 1.4]) + 2.0
    ref = reference_embeddings(model, x)
    ts_path = export_torchscript(model, n, tmp_path / "m.pt")
    onnx_path = export_onnx(model, n, tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(ts_path))
    with torch.no_grad():
        ts = max((scripted(x) - ref).abs().max().item(), (scripted(x[:2]) - ref[:2]).abs().max().item())
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    onnx = max(float(np.abs(session.run(["embedding"], {"points": x[:b].numpy()})[0] - ref[:b].numpy()).max())
               for b in (5, 1))
    with capsys.disabled():
        print(f"\n{name}: TorchScript {ts:.2e}, ONNX {onnx:.2e} max abs diff vs PyTorch (batch 5 and 2 / 1)")
    assert ts <= TOLERANCE and onnx <= TOLERANCE


def test_unexportable_models_are_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="PointPatchTransformer takes 6 input channels and was built without "
                                          "constant_rgb"):
        export_onnx(build_point_encoder("openshape_pointbert_b32_small", embed_dim=16), 128, tmp_path / "m.onnx")
    with pytest.raises(ConfigError, match="PointNextEncoder samples with sampler='random'"):
        export_torchscript(build_point_encoder("pointnext_s", embed_dim=16, sampler="random"), 128, tmp_path / "m.pt")
    with pytest.raises(ConfigError, match="n_points=64 is below PointNet2SSG's minimum 128"):
        ExportablePointEncoder(build_point_encoder("pointnet2_ssg_small", embed_dim=16), 64)
    with pytest.raises(ConfigError, match="expected a captionless3d.models.PointEncoder .* got Linear"):
        ExportablePointEncoder(torch.nn.Linear(3, 3), 64)
    assert not list(tmp_path.iterdir())  # nothing written
