"""Weight import (``captionless3d.models.weights``): ULIP / OpenPoints / captionless3d key layouts, strict checks.

Checkpoint files are written by the tests in the exact layouts of the released code (key names from ULIP's
``models/ULIP_models.py`` + ``main.py`` and OpenPoints' ``classification/cls_base.py`` + ``utils/ckpt_util.py``):

* ULIP ``main.py``: ``{"epoch", "state_dict": DDP model.state_dict(), "optimizer", "scaler", "best_acc1", "args"}``
  with keys ``module.point_encoder.encoder.encoder.{stage}...`` (``BaseCls.encoder``), ``module.point_encoder.
  prediction.head.{0,2}.{0,1}.*`` (``ClsHead(num_classes=-1)``: hidden blocks only, dropout at 1 and 3),
  ``module.pc_projection`` ``(256, 512)`` and the CLIP towers (``transformer.*``, ``visual.*``, ``logit_scale`` ...);
* OpenPoints ``save_checkpoint``: ``{"model", "optimizer", "scheduler", "epoch"}`` with ``encoder.encoder.*`` and
  ``prediction.head.{0,2,4}.*``.

The always-on tests build these files from our own module (same module tree as OpenPoints); the tests at the end
build them from OpenPoints' own ``BaseCls`` when ``openpoints`` is importable and compare forward outputs.
"""
from __future__ import annotations

import argparse

import pytest
import torch
from fixtures.formats import ulip_checkpoint
from fixtures.released import randomise

from captionless3d.errors import CheckpointError
from captionless3d.models import build_point_encoder, create_encoder
from captionless3d.models.weights import (
    checkpoint_in_channels,
    convert_state_dict,
    detect_layout,
    load_pretrained,
    read_checkpoint,
)

N_POINTS = 128


def _points(seed: int = 1, b: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, N_POINTS, 3, generator=g) * 2 - 1


def _openpoints_checkpoint(model) -> dict:
    """OpenPoints ``save_checkpoint`` of a ``BaseCls`` with ``model``'s weights."""
    state = {}
    for k, v in model.state_dict().items():
        if k.startswith("encoder."):
            state[k] = v.clone()  # BaseCls.encoder (a PointNextEncoder, whose tree starts "encoder.") = ours
        else:
            state["prediction." + k[len("head."):]] = v.clone()  # ClsHead.head
    return {"model": state, "optimizer": {}, "scheduler": {}, "epoch": 5}


@pytest.fixture(scope="module")
def ulip_source():
    torch.manual_seed(0)
    model = randomise(build_point_encoder("pointnext_s", in_channels=4, embed_dim=512))
    with torch.no_grad():
        model.head.head[-1][0].bias.zero_()  # ULIP's pc_projection has no bias
    return model


# ----------------------------------------------------------------------------------------------------- ULIP
def test_ulip_checkpoint_file_loads_exactly(tmp_path, ulip_source):
    path = tmp_path / "checkpoint_best.pt"
    torch.save(ulip_checkpoint(ulip_source), path)
    sd = read_checkpoint(path)  # weights_only load, with ULIP's argparse.Namespace allowed
    assert detect_layout(sd) == "ulip"
    assert checkpoint_in_channels(sd) == 4
    # dropout 0 shifts the head's module indices: the mapping is by position, not by index
    model = build_point_encoder("pointnext_s", in_channels=4, embed_dim=512, head_dropout=0.0).eval()
    report = load_pretrained(model, path)
    assert report.layout == "ulip"
    assert "logit_scale" in report.ignored and "transformer.resblocks.0.attn.in_proj_weight" in report.ignored
    assert set(report.loaded) == set(model.state_dict())
    x = _points()
    with torch.no_grad():
        assert torch.allclose(model(x), ulip_source(x), rtol=1e-5, atol=1e-5)


def test_ulip_in_channels_mismatch_says_what_to_do(ulip_source):
    model = build_point_encoder("pointnext_s", in_channels=3)
    with pytest.raises(CheckpointError, match=r"in_channels=4 \(ULIP: xyz \+ height\).*in_channels=4"):
        load_pretrained(model, ulip_checkpoint(ulip_source))


def test_ulip_projection_to_other_embed_dim_needs_head_hidden(ulip_source):
    model = randomise(build_point_encoder("pointnext_s", in_channels=4, embed_dim=128), seed=5)
    with pytest.raises(CheckpointError, match="head='hidden'"):
        load_pretrained(model, ulip_checkpoint(ulip_source))
    before = model.head.head[-1][0].weight.clone()
    report = load_pretrained(model, ulip_checkpoint(ulip_source), head="hidden")
    assert "pc_projection" in report.ignored
    assert torch.equal(model.head.head[-1][0].weight, before)  # own projection kept
    sd_src, sd = ulip_source.state_dict(), model.state_dict()
    assert all(torch.equal(sd[k], sd_src[k]) for k in sd if k.startswith("encoder."))
    assert torch.equal(sd["head.head.2.0.weight"], sd_src["head.head.2.0.weight"])


# ----------------------------------------------------------------------------------------------------- OpenPoints
def test_openpoints_basecls_file_loads_exactly(tmp_path):
    source = randomise(build_point_encoder("pointnext_s", embed_dim=40), seed=2)  # e.g. a ModelNet40 classifier
    path = tmp_path / "pointnext-s_ckpt_best.pth"
    torch.save(_openpoints_checkpoint(source), path)
    model = build_point_encoder("pointnext_s", embed_dim=40).eval()
    report = load_pretrained(model, path)
    assert report.layout == "openpoints" and report.ignored == []
    x = _points(3)
    with torch.no_grad():
        assert torch.allclose(model(x), source(x), rtol=1e-5, atol=1e-5)


def test_openpoints_classifier_into_embedding_model_with_head_hidden():
    source = randomise(build_point_encoder("pointnext_s", embed_dim=40), seed=2)
    ckpt = _openpoints_checkpoint(source)
    model = build_point_encoder("pointnext_s", embed_dim=512)
    with pytest.raises(CheckpointError, match=r"shape mismatches.*40.*512|head='hidden'"):
        load_pretrained(model, ckpt)
    report = load_pretrained(model, ckpt, head="hidden")
    assert report.ignored == ["prediction.head.4.0.bias", "prediction.head.4.0.weight"]
    report = load_pretrained(model, ckpt, head="none")
    assert all(k.startswith("prediction.") for k in report.ignored) and len(report.ignored) == 14


def test_bare_encoder_state_dict():
    source = randomise(create_encoder("pointnext_s"), seed=4)
    target = create_encoder("pointnext_s").eval()
    assert detect_layout(source.state_dict()) == "encoder"
    load_pretrained(target, source.state_dict())
    x = _points(5)
    with torch.no_grad():
        assert torch.allclose(target(x), source(x), rtol=1e-5, atol=1e-5)
    full = build_point_encoder("pointnext_s")
    with pytest.raises(CheckpointError, match="head='none'"):
        load_pretrained(full, source.state_dict())
    load_pretrained(full, source.state_dict(), head="none")
    assert torch.equal(full.encoder.state_dict()["encoder.3.0.convs.1.0.weight"],
                       source.state_dict()["encoder.3.0.convs.1.0.weight"])


def test_own_lightning_checkpoint_layout(tmp_path):
    source = randomise(build_point_encoder("pointnext_s", embed_dim=64), seed=6)
    state = {"encoder." + k: v for k, v in source.state_dict().items()}  # CaptionlessModule.encoder
    state["loss.logit_scale"] = torch.tensor(2.3)
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": state, "epoch": 2, "global_step": 80, "hyper_parameters": {"lr": 1e-3}}, path)
    model = build_point_encoder("pointnext_s", embed_dim=64, pretrained=str(path)).eval()
    x = _points(7)
    with torch.no_grad():
        assert torch.allclose(model(x), source(x), rtol=1e-5, atol=1e-5)
    report = load_pretrained(model, path, layout="captionless3d")
    assert report.ignored == ["loss.logit_scale"]
    # DDP + torch.compile wrappers on our plain state_dict
    wrapped = {"module._orig_mod." + k: v for k, v in source.state_dict().items()}
    assert load_pretrained(model, wrapped).layout == "captionless3d"


# ----------------------------------------------------------------------------------------------------- errors
def test_truncated_checkpoint_lists_missing_keys(ulip_source):
    ckpt = ulip_checkpoint(ulip_source)
    dropped = [k for k in ckpt["state_dict"] if k.startswith("module.point_encoder.encoder.encoder.5.")]
    for k in dropped:
        del ckpt["state_dict"][k]
    model = build_point_encoder("pointnext_s", in_channels=4)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(model, ckpt)
    msg = str(info.value)
    assert "missing keys (" in msg and "encoder.encoder.5.0.convs.0.0.weight" in msg
    assert "unexpected" not in msg


def test_wrong_architecture_lists_missing_and_unexpected(ulip_source):
    big = build_point_encoder("pointnext_b", in_channels=4)  # 5 stages with InvResMLP blocks
    model = build_point_encoder("pointnext_s", in_channels=4)
    with pytest.raises(CheckpointError) as info:
        load_pretrained(model, ulip_checkpoint(big))
    msg = str(info.value)
    assert "missing keys (" in msg and "unexpected keys (" in msg
    assert "point_encoder.encoder.encoder.1.1.convs.convs.0.0.weight" in msg or "shape mismatches" in msg


def test_extra_key_inside_point_encoder_is_unexpected(ulip_source):
    ckpt = ulip_checkpoint(ulip_source)
    ckpt["state_dict"]["module.point_encoder.encoder.encoder.9.0.convs.0.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): point_encoder.encoder.encoder.9.0"):
        load_pretrained(build_point_encoder("pointnext_s", in_channels=4), ckpt)


def test_unreadable_and_unrecognised_files(tmp_path, ulip_source):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    torch.save(ulip_checkpoint(ulip_source, clip_towers=False), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # interrupted download
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        read_checkpoint(cut)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, other)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout"):
        load_pretrained(build_point_encoder("pointnext_s"), other)
    with pytest.raises(CheckpointError, match="no tensors"):
        load_pretrained(build_point_encoder("pointnext_s"), {"epoch": 1, "note": "x"})
    with pytest.raises(CheckpointError, match="head must be one of"):
        convert_state_dict({}, build_point_encoder("pointnext_s"), head="final")


# ----------------------------------------------------------------------------------------------------- official
def _openpoints():
    try:
        import openpoints.models.backbone.pointnext as op_pointnext
        import openpoints.models.layers.group as op_group
        from openpoints.models import build_model_from_cfg
        from openpoints.utils import EasyConfig
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"openpoints not importable: {exc!r}")
    return op_pointnext, op_group, build_model_from_cfg, EasyConfig


_BASECLS_YAML = """
model:
  NAME: BaseCls
  encoder_args:
    NAME: PointNextEncoder
    blocks: [1, 1, 1, 1, 1, 1]
    strides: [1, 2, 2, 2, 2, 1]
    width: 32
    in_channels: {in_channels}
    sa_layers: 2
    sa_use_res: True
    radius: 0.15
    radius_scaling: 1.5
    nsample: 32
    expansion: 4
    aggr_args: {{feature_type: 'dp_fj', reduction: 'max'}}
    group_args: {{NAME: 'ballquery', normalize_dp: True}}
    conv_args: {{order: conv-norm-act}}
    act_args: {{act: 'relu'}}
    norm_args: {{norm: 'bn'}}
  cls_args:
    NAME: ClsHead
    num_classes: 40
    mlps: [512, 256]
    norm_args: {{norm: 'bn1d'}}
"""


@pytest.fixture()
def official(tmp_path, monkeypatch):
    """OpenPoints' own ``BaseCls`` built from ULIP's ``pointnext-s.yaml`` (with ``num_classes: 40``: OpenPoints'
    released ``ClsHead`` has no ``-1`` option, ULIP's fork drops the final layer, which the ULIP test does too), on
    our CPU versions of its CUDA ops."""
    op_pointnext, op_group, build_model_from_cfg, EasyConfig = _openpoints()
    from captionless3d.models.ops import ball_query, furthest_point_sample

    def grouping(features, idx):
        B, C, _ = features.shape
        _, M, K = idx.shape
        return features.gather(2, idx.long().reshape(B, 1, M * K).expand(B, C, M * K)).view(B, C, M, K)

    monkeypatch.setattr(op_pointnext, "furthest_point_sample", lambda xyz, n: furthest_point_sample(xyz, n).int())
    monkeypatch.setattr(op_group, "ball_query", lambda r, k, s, q: ball_query(s, q, r, k).int())
    monkeypatch.setattr(op_group, "grouping_operation", grouping)

    def build(in_channels: int):
        path = tmp_path / f"pointnext-s-{in_channels}.yaml"
        path.write_text(_BASECLS_YAML.format(in_channels=in_channels))
        cfg = EasyConfig()
        cfg.load(str(path), recursive=False)
        torch.manual_seed(in_channels)
        return randomise(build_model_from_cfg(cfg.model).double(), seed=in_channels)

    return build


def test_official_openpoints_basecls_checkpoint(tmp_path, official):
    theirs = official(3)
    path = tmp_path / "official.pth"
    torch.save({"model": theirs.state_dict(), "optimizer": {}, "scheduler": {}, "epoch": 1}, path)
    ours = build_point_encoder("pointnext_s", embed_dim=40).double().eval()
    assert load_pretrained(ours, path).layout == "openpoints"
    x = _points(8).double()
    with torch.no_grad():
        logits = theirs.prediction(theirs.encoder.forward_cls_feat(x.clone(), x.transpose(1, 2).contiguous()))
        assert torch.allclose(ours(x), logits, rtol=1e-7, atol=1e-9)


def test_official_module_in_ulip_layout(tmp_path, official):
    theirs = official(4)
    projection = torch.randn(256, 512, dtype=torch.float64) / 16
    state = {"module.point_encoder." + k: v for k, v in theirs.state_dict().items()
             if not k.startswith("prediction.head.4.")}  # ULIP's ClsHead(num_classes=-1): no final layer
    state["module.pc_projection"] = projection
    state["module.logit_scale"] = torch.tensor(2.6592)
    path = tmp_path / "ulip_pointnext.pt"
    torch.save({"epoch": 1, "state_dict": state, "args": argparse.Namespace(model="ULIP_PN_NEXT")}, path)
    ours = build_point_encoder("pointnext_s", in_channels=4, embed_dim=512).double().eval()
    load_pretrained(ours, path)
    x = _points(9).double()
    height = x[..., 1:2] - x[..., 1:2].min(dim=1, keepdim=True).values  # ULIP's use_height, gravity_dim 1
    f0 = torch.cat([x, height], dim=-1).transpose(1, 2).contiguous()
    with torch.no_grad():
        feat = theirs.encoder.forward_cls_feat(x.clone(), f0)
        expected = theirs.prediction.head[:4](feat) @ projection  # ULIP encode_pc: point_encoder(pc) @ pc_projection
        assert torch.allclose(ours(x), expected, rtol=1e-7, atol=1e-9)
