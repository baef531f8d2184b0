"""PointNeXt encoder, head and factory: architecture, fused-vs-reference equivalence, input errors."""
from __future__ import annotations

import pytest
import torch

from captionless3d.errors import ConfigError, DataError
from captionless3d.models import (
    PointEncoder,
    PointNextEncoder,
    ProjectionHead,
    build_point_encoder,
    create_encoder,
    list_encoders,
)

# exact counts, identical to openpoints==0.1.2's PointNextEncoder built from the same settings
ENCODER_PARAMS = {"pointnext_s": 968_480, "pointnext_b": 3_476_224, "pointnext_l": 6_773_440,
                  "pointnext_xl": 40_174_848}


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cloud(B: int, N: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g, dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)  # unit sphere


def test_registry_lists_presets():
    # the other backbone families (tests/models/test_backbones.py) share the registry
    assert [n for n in list_encoders() if n.startswith("pointnext")] == ["pointnext_b", "pointnext_l", "pointnext_s",
                                                                         "pointnext_xl"]


@pytest.mark.parametrize("name", ["pointnext_s", "pointnext_b", "pointnext_l"])
def test_parameter_counts(name):
    enc = create_encoder(name)
    assert _n(enc) == ENCODER_PARAMS[name]
    assert _n(create_encoder(name, in_channels=4)) == ENCODER_PARAMS[name] + 32  # stem conv only


def test_pointnext_s_with_paper_head_is_1_36m():
    model = build_point_encoder("pointnext_s")
    proj = _n(model.head.head[-1])
    assert proj == 256 * 512 + 512
    assert _n(model) - proj == 1_363_232  # encoder + [512, 256] ClsHead (ULIP/paper: "1.367 M" / "1.4 M")
    assert _n(model) == 1_494_816


def test_pointnext_s_layout_matches_openpoints_names():
    sd = create_encoder("pointnext_s").state_dict()
    assert sd["encoder.0.0.convs.0.0.weight"].shape == (32, 3, 1)  # stem Conv1d, with bias
    assert sd["encoder.0.0.convs.0.0.bias"].shape == (32,)
    assert sd["encoder.1.0.convs.0.0.weight"].shape == (32, 35, 1, 1)  # dp_fj: 3 + 32 -> 64 // 2
    assert sd["encoder.1.0.convs.1.0.weight"].shape == (64, 32, 1, 1)
    assert sd["encoder.1.0.convs.1.1.running_var"].shape == (64,)
    assert sd["encoder.1.0.skipconv.0.weight"].shape == (64, 32, 1)
    assert sd["encoder.5.0.convs.0.0.weight"].shape == (512, 515, 1, 1)  # group all: xyz + 512
    b = create_encoder("pointnext_b").state_dict()
    assert b["encoder.1.1.convs.convs.0.0.weight"].shape == (64, 67, 1, 1)  # InvResMLP local aggregation
    assert b["encoder.1.1.pwconv.0.0.weight"].shape == (256, 64, 1)


def test_radius_schedule_follows_openpoints():
    s = create_encoder("pointnext_s")
    flat = [r for stage in s.radii for r in stage]
    assert flat == pytest.approx([0.15, 0.15, 0.225, 0.3375, 0.50625, 0.759375])
    b = create_encoder("pointnext_b")
    assert [len(stage) for stage in b.radii] == [1, 2, 3, 2, 2]
    flat = [r for stage in b.radii for r in stage]
    assert flat == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.4, 0.4, 0.4, 0.8, 0.8, 1.6])
    assert [stage[0].radius for stage in b.encoder][1:] == pytest.approx([0.1, 0.2, 0.4, 0.8])


@pytest.mark.parametrize("in_channels", [3, 4])
def test_forward_shapes(in_channels):
    model = build_point_encoder("pointnext_s", in_channels=in_channels).eval()
    out = model(_cloud(2, 64))
    assert out.shape == (2, 512) and torch.isfinite(out).all()
    feats = torch.randn(2, in_channels, 64)
    assert model(_cloud(2, 64), feats).shape == (2, 512)


def _copy_and_randomise(ref: PointNextEncoder, fus: PointNextEncoder) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() == 1:  # BN affine and biases: include negative gammas (min-selection branch)
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
        for b in ref.buffers():
            if b.dtype.is_floating_point:
                b.copy_(torch.rand(b.shape, generator=g, dtype=b.dtype) + 0.5)
    fus.load_state_dict(ref.state_dict())


@pytest.mark.parametrize("name,N", [("pointnext_s", 128), ("pointnext_b", 256)])
@pytest.mark.parametrize("train", [True, False])
def test_fused_path_matches_reference(name, N, train):
    torch.manual_seed(0)
    ref = create_encoder(name, fused=False).double().train(train)
    fus = create_encoder(name, fused=True).double().train(train)
    _copy_and_randomise(ref, fus)
    x = _cloud(3, N, seed=2, dtype=torch.float64)
    y_ref, y_fus = ref(x), fus(x)
    assert torch.allclose(y_ref, y_fus, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(y_ref)
    (y_ref * g).sum().backward()
    (y_fus * g).sum().backward()
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    for (name_p, p_ref), p_fus in zip(ref.named_parameters(), fus.parameters()):
        assert torch.allclose(p_ref.grad, p_fus.grad, rtol=1e-7, atol=1e-8 * scale), name_p
    for (name_b, b_ref), b_fus in zip(ref.named_buffers(), fus.buffers()):
        assert torch.allclose(b_ref.double(), b_fus.double(), rtol=1e-9, atol=1e-12), name_b


def test_fused_gradcheck_small():
    """The hand-written backward against finite differences (float64, train mode, negative gammas)."""
    from captionless3d.models import grouped
    from captionless3d.models.pointnext import ConvBlock

    torch.manual_seed(0)
    b1 = ConvBlock(5, 4, dim=2, norm=True, act=True).double()
    b2 = ConvBlock(4, 6, dim=2, norm=True, act=False).double()
    with torch.no_grad():
        b1.bn.weight.copy_(torch.tensor([1.0, -0.5, 2.0, 0.7]))
        b2.bn.weight.copy_(torch.tensor([1.0, -1.5, 0.3, -0.2, 2.0, 1.1]))
    u = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    nbr = torch.randint(0, 7, (2, 3, 5))

    # gradcheck perturbs inputs; BN running stats change between calls but do not affect train-mode outputs
    assert torch.autograd.gradcheck(lambda u, v: grouped.grouped_mlp_max(u, v, nbr, [b1, b2]), (u, v))
    assert torch.autograd.gradcheck(lambda u, v: grouped.grouped_mlp_max(u, v, nbr, [b1]), (u, v))


def test_eval_mode_is_deterministic_and_per_sample():
    model = build_point_encoder("pointnext_s").eval()
    x = _cloud(3, 96, seed=5)
    with torch.no_grad():
        a = model(x)
        b = model(x)
        single = model(x[1:2])
    assert torch.equal(a, b)
    assert torch.allclose(a[1:2], single, atol=1e-5)


def test_train_step_updates_all_parameters():
    model = build_point_encoder("pointnext_s", embed_dim=16, head_mlps=(32,))
    out = model(_cloud(4, 64))
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    stem_bias = "encoder.encoder.0.0.convs.0.0.bias"  # followed by BN: gradient is zero up to rounding
    zero = [n for n, p in model.named_parameters() if n != stem_bias and p.grad.abs().max() == 0]
    assert not zero


# ------------------------------------------------------------------------------------------------ errors
@pytest.fixture(scope="module")
def small_model() -> PointNextEncoder:
    return create_encoder("pointnext_s").eval()


@pytest.mark.parametrize(
    "xyz,match",
    [
        (torch.zeros(0, 64, 3), "empty batch"),
        (torch.zeros(2, 8, 3), "at least 16"),
        (torch.zeros(64, 3), r"\(B, N, 3\)"),
        (torch.zeros(2, 64, 4), r"\(B, N, 3\)"),
        (torch.zeros(2, 64, 3, dtype=torch.long), "floating"),
        ([[0.0, 0.0, 0.0]], "torch.Tensor"),
    ],
)
def test_bad_xyz_raises_data_error(small_model, xyz, match):
    with pytest.raises(DataError, match=match):
        small_model(xyz)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_xyz(small_model, bad):
    x = _cloud(2, 64)
    x[1, 3, 0] = bad
    with pytest.raises(DataError, match="NaN or Inf"):
        small_model(x)


def test_wrong_feature_channels(small_model):
    with pytest.raises(DataError, match=r"\(2, 3, 64\)"):
        small_model(_cloud(2, 64), torch.zeros(2, 4, 64))
    with pytest.raises(DataError, match="features=None"):
        create_encoder("pointnext_s", in_channels=6)(_cloud(2, 64))


def test_config_errors():
    with pytest.raises(ConfigError, match="pointnext_s"):
        build_point_encoder("pointnet_plus_plus")
    with pytest.raises(ConfigError, match="depth"):
        build_point_encoder("pointnext_s", depth=3)
    with pytest.raises(ConfigError, match="group all"):
        PointNextEncoder(strides=(1, 2, 1, 2), blocks=(1, 1, 1, 1))
    with pytest.raises(ConfigError):
        PointNextEncoder(blocks=(1, 1), strides=(1, 2, 2))
    with pytest.raises(ConfigError):
        ProjectionHead(512, mlps=(512, 256), out_dim=512, dropout=1.5)


def test_projection_head_layout():
    head = ProjectionHead(512)
    kinds = [type(m).__name__ for m in head.head]
    assert kinds == ["Sequential", "Dropout", "Sequential", "Dropout", "Sequential"]
    assert head.head[0][0].bias is None and head.head[-1][0].bias is not None
    assert isinstance(build_point_encoder(), PointEncoder)
    with pytest.raises(DataError):
        head(torch.zeros(2, 256))
