"""PointCLIP zero-shot baseline: depth-map geometry on hand-made clouds, view symmetries, batching, aggregation, the
config/factory, and a run through the evaluation harness on a tiny synthetic world with a tiny random OpenCLIP."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from captionless3d.baselines.pointclip import (
    DEFAULT_VIEW_ANGLES,
    POINTCLIP_TEMPLATE,
    VIEW_NAMES,
    PointCLIPEncoder,
    create_pointclip,
    view_bases,
    with_prompt_template,
)
from captionless3d.errors import ConfigError, DataError
from captionless3d.hydra_utils import CONFIG_DIR, instantiate

FRONT, RIGHT, BACK, LEFT, TOP, BOTTOM = range(6)
INF = math.inf
# three points: A and B on the optical axis of the front/back views (A nearer the front camera), C up and to the right
TOY = torch.tensor([[[0.0, 0.0, 0.5], [0.0, 0.0, -0.5], [0.5, 0.5, 0.0]]])


def _random_cloud(n: int = 300, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(1, n, 3, generator=g)
    return pts / pts.norm(dim=-1, keepdim=True) * torch.rand(1, n, 1, generator=g) ** (1 / 3)  # inside the unit ball


def test_default_views_are_pointclips_axis_aligned_set():
    assert VIEW_NAMES == ("front", "right", "back", "left", "top", "bottom") and len(DEFAULT_VIEW_ANGLES) == 6
    b = view_bases(DEFAULT_VIEW_ANGLES)  # rows: right, up, forward (world -> camera)
    assert b.shape == (6, 3, 3) and b.dtype == torch.float32
    eye = torch.eye(3)
    x, y, z = eye
    expected = {
        FRONT: (x, y, -z), RIGHT: (-z, y, -x), BACK: (-x, y, z), LEFT: (z, y, x), TOP: (x, -z, -y), BOTTOM: (x, z, y),
    }
    for view, rows in expected.items():
        assert torch.equal(b[view], torch.stack(rows)), VIEW_NAMES[view]  # exact signed permutations
    assert torch.allclose(b @ b.transpose(1, 2), eye.expand(6, 3, 3))
    # (right, up, backward) is right-handed, so with the forward row the determinant is -1 for every view
    assert torch.equal(torch.linalg.det(b), -torch.ones(6))


def test_toy_cloud_lands_on_expected_pixels_with_nearest_depth(stub_teacher):
    enc = PointCLIPEncoder(stub_teacher, image_size=8, zoom=1.0, dilation=1)
    d = enc.depth_maps(TOY)
    assert d.shape == (1, 6, 8, 8) and d.dtype == torch.float32
    # pixel (row, col) = (floor((1 - v) * 4), floor((u + 1) * 4)); depth = signed distance along the view axis
    expected = {
        FRONT: {(4, 4): -0.5, (2, 6): 0.0},  # A (z=+0.5) hides B on the axis: nearest wins
        BACK: {(4, 4): -0.5, (2, 2): 0.0},  # from behind B is the nearer one; C appears on the left
        TOP: {(6, 4): 0.0, (2, 4): 0.0, (4, 6): -0.5},  # A (front) at the bottom, B at the top, C (y=0.5) nearest
        RIGHT: {(4, 2): 0.0, (4, 6): 0.0, (2, 4): -0.5},  # A on the left, B on the right, C in front
    }
    for view, pixels in expected.items():
        want = torch.full((8, 8), INF)
        for (r, c), depth in pixels.items():
            want[r, c] = depth
        assert torch.equal(d[0, view], want), VIEW_NAMES[view]

    # grey values: PointCLIP maps distance from the camera (d + 1.6) to brightness; background 0, or 255 inverted
    grey = enc.depth_to_grey(d[0, FRONT])
    raw = PointCLIPEncoder(stub_teacher, image_size=8, zoom=1.0, dilation=1, invert=False).depth_to_grey(d[0, FRONT])
    near = PointCLIPEncoder(stub_teacher, image_size=8, zoom=1.0, dilation=1, invert=False, depth_mapping="near_bright")
    near_grey = near.depth_to_grey(d[0, FRONT])
    assert grey.dtype == torch.uint8
    assert raw[4, 4] == round(255 * 1.1 / 2.6) and raw[2, 6] == round(255 * 1.6 / 2.6) and raw[0, 0] == 0
    assert raw[4, 4] < raw[2, 6]  # A is nearer than C: darker in PointCLIP's mapping
    assert near_grey[4, 4] > near_grey[2, 6] > 0 == near_grey[0, 0]  # and brighter in near_bright
    assert torch.equal(grey, 255 - raw) and grey[0, 0] == 255

    img = enc.render(TOY)
    assert img.shape == (1, 6, 8, 8, 3) and img.dtype == torch.uint8
    assert torch.equal(img[..., 0], img[..., 2]) and torch.equal(img[0, FRONT, ..., 1], grey)


def test_out_of_frame_points_dropped_and_perspective(stub_teacher):
    far = torch.cat([TOY, torch.tensor([[[3.0, 0.0, 0.0]]])], dim=1)  # outside the image in the front view
    enc = PointCLIPEncoder(stub_teacher, image_size=8, zoom=1.0, dilation=1)
    assert torch.equal(enc.depth_maps(far)[0, FRONT], enc.depth_maps(TOY)[0, FRONT])
    # perspective (PointCLIP-V1's code): u = zoom * c * x / (d + c); C at depth 0 is unchanged, off-centre points
    # nearer than the centre plane move out, farther ones move in
    persp = PointCLIPEncoder(stub_teacher, image_size=8, zoom=1.0, dilation=1, projection="perspective")
    pts = torch.tensor([[[0.5, 0.5, 0.0], [0.6, -0.6, 0.5], [-0.6, -0.6, -0.5]]])
    d = persp.depth_maps(pts)[0, FRONT]
    u_near, u_far = 0.6 * 1.6 / 1.1, -0.6 * 1.6 / 2.1
    want = {(2, 6): 0.0, (math.floor((1 + u_near) * 4), math.floor((1 + u_near) * 4)): -0.5,
            (math.floor((1 - u_far) * 4), math.floor((1 + u_far) * 4)): 0.5}
    assert {(r, c): d[r, c].item() for r, c in torch.isfinite(d).nonzero().tolist()} == want


def test_densification_is_a_min_filter(stub_teacher):
    sparse = PointCLIPEncoder(stub_teacher, image_size=8, zoom=1.0, dilation=1).depth_maps(TOY)
    dense_enc = PointCLIPEncoder(stub_teacher, image_size=8, zoom=1.0, dilation=3)
    dense = dense_enc.depth_maps(TOY)
    assert torch.equal(dense_enc.depth_maps(TOY, densify=False), sparse)
    front = dense[0, FRONT]
    assert front[3, 5] == -0.5  # sees A (4,4) and C (2,6): the nearer wins
    assert front[1, 7] == 0.0 and front[5, 3] == -0.5 and front[0, 0] == INF and front[7, 7] == INF
    assert (dense <= sparse).all()  # never pushes a pixel farther
    assert torch.isfinite(dense).sum() > torch.isfinite(sparse).sum()
    assert PointCLIPEncoder(stub_teacher, image_size=64).dilation == 3  # auto: round(S / 32) made odd
    assert PointCLIPEncoder(stub_teacher, image_size=224).dilation == 7
    assert PointCLIPEncoder(stub_teacher, image_size=32).dilation == 1


def test_90_degree_rotations_permute_views(stub_teacher):
    enc = PointCLIPEncoder(stub_teacher, image_size=16, zoom=1.0, dilation=3)
    pts = _random_cloud()
    maps = enc.depth_maps(pts)[0]
    x, y, z = pts.unbind(-1)
    about_y = enc.depth_maps(torch.stack([z, y, -x], -1))[0]  # +90 deg about the vertical: the front turns to +x
    for before, after in ((FRONT, RIGHT), (RIGHT, BACK), (BACK, LEFT), (LEFT, FRONT)):
        assert torch.equal(about_y[after], maps[before]), (VIEW_NAMES[before], VIEW_NAMES[after])
    assert torch.equal(about_y[TOP], torch.rot90(maps[TOP], 1))  # top/bottom turn in the image plane
    assert torch.equal(about_y[BOTTOM], torch.rot90(maps[BOTTOM], -1))
    about_x = enc.depth_maps(torch.stack([x, -z, y], -1))[0]  # +90 deg about x: the top turns to the front
    assert torch.equal(about_x[FRONT], maps[TOP])
    assert torch.equal(about_x[TOP], torch.rot90(maps[BACK], 2))
    assert not torch.equal(maps[FRONT], maps[RIGHT])  # the check is not vacuous


def test_batch_matches_single_and_one_teacher_call(micro_teacher, stub_teacher):
    clouds = torch.cat([_random_cloud(200, seed) for seed in range(4)])
    stub_enc = PointCLIPEncoder(stub_teacher)
    stub_enc(clouds)
    assert stub_teacher.calls == [(4 * 6, 8, 8, 3)]  # every view of every cloud in one encode_images call
    assert torch.equal(stub_enc.render(clouds)[2:3], stub_enc.render(clouds[2:3]))
    enc = PointCLIPEncoder(micro_teacher)
    batch = enc(clouds)
    single = torch.cat([enc(clouds[i : i + 1]) for i in range(4)])
    assert torch.allclose(batch, single, atol=1e-5)


def test_output_shape_normalisation_and_view_weights(micro_teacher):
    clouds = torch.cat([_random_cloud(200, seed) for seed in range(3)])
    enc = PointCLIPEncoder(micro_teacher)
    out = enc(clouds.double())
    assert out.shape == (3, micro_teacher.dim) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    views = enc.view_embeddings(clouds)  # (B, V, D), each view unit norm
    assert views.shape == (3, 6, micro_teacher.dim)
    mean = views.mean(1)
    assert torch.allclose(out, mean / mean.norm(dim=-1, keepdim=True), atol=1e-6)  # equal weights by default
    front_only = PointCLIPEncoder(micro_teacher, view_weights=[1, 0, 0, 0, 0, 0])(clouds)
    assert torch.allclose(front_only, views[:, FRONT], atol=1e-6)
    # the teacher is never a submodule: no parameters, train()/eval() and .to() leave it alone
    assert list(enc.parameters()) == [] and micro_teacher.model.training is False
    enc.train()
    assert micro_teacher.model.training is False
    with pytest.raises(DataError):
        enc(torch.zeros(2, 5, 2))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(n_views=0), "n_views"), (dict(n_views=11), "n_views"), (dict(view_weights=[1.0, 2.0]), "view_weights"),
        (dict(view_weights=[1, 1, 1, 1, 1, -1]), "view_weights"), (dict(dilation=2), "dilation"),
        (dict(depth_mapping="closer"), "depth_mapping"), (dict(projection="fisheye"), "projection"),
        (dict(camera_distance=0.5), "camera_distance"), (dict(zoom=0), "zoom"),
        (dict(view_angles=[(0, 0, 0)]), "view_angles"), (dict(n_views=2, view_angles=[(0, 0)]), "n_views"),
    ],
)
def test_bad_config_raises_config_error_naming_the_key(stub_teacher, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        PointCLIPEncoder(stub_teacher, **kwargs)


def test_config_file_and_factory(stub_teacher):
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "baseline" / "pointclip.yaml").pointclip
    enc = instantiate(cfg, stub_teacher, key="baseline.pointclip")
    default = PointCLIPEncoder(stub_teacher)
    assert isinstance(enc, PointCLIPEncoder) and enc.extra_repr() == default.extra_repr()  # yaml = the defaults
    ten = create_pointclip(stub_teacher, n_views=10, view_weights=OmegaConf.create([1] * 10), dilation=None)
    assert ten.n_views == 10 and ten.view_angles[6:] == [(45.0, 20.0), (135.0, 20.0), (225.0, 20.0), (315.0, 20.0)]
    custom = create_pointclip(stub_teacher, view_angles=[[30, 10], [210, 10]])
    assert custom.n_views == 2 and custom.view_angles == [(30.0, 10.0), (210.0, 10.0)]
    with pytest.raises(ConfigError, match="unknown PointCLIP options"):
        create_pointclip(stub_teacher, n_view=6)


def test_runs_through_evaluate_encoder_on_tiny_world(tiny_world, tiny_features, micro_teacher):
    from captionless3d.evaluation.runner import evaluate_encoder

    enc = PointCLIPEncoder(micro_teacher)
    scores = evaluate_encoder(enc, tiny_world, tiny_features, n_points=128, batch_size=4).metrics
    assert ({"zeroshot/top1", "zeroshot/top5", "retrieval/nobg/paper/i2s_top1", "retrieval/bg/gallery/i2s_r1"}
            <= set(scores))
    assert all(math.isfinite(v) and 0.0 <= v <= 100.0 for v in scores.values())
    # PointCLIP's own prompt template through a feature-store view (every other array is the store's)
    feats = with_prompt_template(tiny_features, micro_teacher, tiny_world.categories)
    assert feats.prompt_emb.shape == (3, micro_teacher.dim) and feats.photo_emb is tiny_features.photo_emb
    assert feats.prompt_template == POINTCLIP_TEMPLATE
    zs = evaluate_encoder(enc, tiny_world, feats, n_points=128, protocols=("zeroshot",)).metrics
    assert math.isfinite(zs["zeroshot/top1"])
    with pytest.raises(ConfigError, match="placeholder"):
        with_prompt_template(tiny_features, micro_teacher, tiny_world.categories, "a depth map")

