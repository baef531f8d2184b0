"""World v3: per-image colours, grey renders, and per-split fingerprints (tiny worlds)."""
from __future__ import annotations

import numpy as np
import pytest

from captionless3d.data.synthetic import ensure_world, world
from captionless3d.data.synthetic.render import render_scenes, to_uint8
from captionless3d.data.synthetic.scene import image_albedo, make_object, view_items
from captionless3d.data.synthetic.shapes import COLORS
from captionless3d.errors import ConfigError

TINY = dict(seed=5, categories=["chair", "car", "lamp"], n_teacher=2, n_train=2, n_val=1, n_test=2, n_points=256,
            n_views=4, image_size=32, photos_per_object=2, progress=False)
COLOUR_WORDS = set(COLORS)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp("colours")
    return ensure_world(root, **TINY), ensure_world(root, **TINY, colours="per_image")


def _object_pixels(views: np.ndarray) -> np.ndarray:
    """(..., H, W) bool: pixels that are not the plain white background."""
    return (views < 250).any(axis=-1)


def test_object_mode_keeps_the_original_world_hash():
    params = world.world_params(**{k: v for k, v in TINY.items() if k != "progress"})
    assert "colours" not in params  # the key of worlds built before colour modes existed
    v3 = world.world_params(**{k: v for k, v in TINY.items() if k != "progress"}, colours="per_image")
    assert v3["colours"] == "per_image" and world.world_key(v3) != world.world_key(params)
    with pytest.raises(ConfigError, match="colours"):
        world.world_params(colours="rainbow")


def test_per_image_colours_change_colour_not_geometry(worlds):
    v1, v3 = worlds
    np.testing.assert_array_equal(v1.points, v3.points)  # same objects
    np.testing.assert_array_equal(_object_pixels(v1.views), _object_pixels(v3.views))  # same silhouettes
    np.testing.assert_array_equal(v1.masks, v3.masks)  # same photo geometry and cameras
    assert not np.array_equal(v1.views, v3.views)
    # in v1 an object's renders share its colours; in v3 they are redrawn per view
    def mean_colour_spread(w):
        views = np.asarray(w.views, dtype=np.float64)
        mask = _object_pixels(w.views)[..., None]
        mean = (views * mask).sum(axis=(2, 3)) / np.maximum(mask.sum(axis=(2, 3)), 1)  # (N, V, 3)
        return float(mean.std(axis=1).mean())
    assert mean_colour_spread(v3) > 3 * mean_colour_spread(v1)


def test_per_image_captions_name_no_colour(worlds):
    v1, v3 = worlds
    assert any(COLOUR_WORDS & set(c.replace(",", " ").split()) for caps in v1.captions for c in caps)
    for caps in v3.captions:
        for caption in caps:
            assert not COLOUR_WORDS & set(caption.replace(",", " ").split()), caption


def test_per_image_draws_from_the_palette_and_is_reproducible():
    a = make_object(1, "sofa", "train", 3, 64, colours="per_image")
    b = make_object(1, "sofa", "train", 3, 64, colours="per_image")
    first, second = image_albedo(a), image_albedo(a)
    assert not np.array_equal(first, second)  # a fresh draw per image
    np.testing.assert_array_equal(first, image_albedo(b))  # from the object's own seeded stream
    # faces that shared a colour still share one: parts are recoloured whole
    _, groups = np.unique(a.colors, axis=0, return_inverse=True)
    for g in np.unique(groups):
        assert len(np.unique(first[groups.reshape(-1) == g], axis=0)) == 1
    palette = np.asarray([COLORS[n] for n in a.palette])
    distance = np.abs(first[:, None, :] - palette[None]).max(axis=2).min(axis=1)
    assert distance.max() <= 0.05 + 1e-9  # a palette colour plus the slot jitter
    assert len(set(a.palette)) == len(a.palette)


def test_grey_renders_are_grey_with_the_same_silhouette():
    obj = make_object(0, "chair", "test", 1, 64)
    coloured, _ = render_scenes(view_items(obj, 3), 32, 32)
    grey, _ = render_scenes(view_items(obj, 3, "grey"), 32, 32)
    coloured, grey = to_uint8(coloured), to_uint8(grey)
    np.testing.assert_array_equal(_object_pixels(coloured), _object_pixels(grey))
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    with pytest.raises(ValueError, match="colours"):
        image_albedo(obj, "sepia")


def test_split_fingerprint_ignores_the_other_splits(tmp_path):
    small = ensure_world(tmp_path, **{**TINY, "n_train": 1})
    large = ensure_world(tmp_path, **{**TINY, "n_train": 3})
    assert small.fingerprint != large.fingerprint
    assert small.split_fingerprint("teacher") == large.split_fingerprint("teacher")
    assert small.split_fingerprint("train") != large.split_fingerprint("train")
    np.testing.assert_array_equal(small.views[small.indices("teacher")], large.views[large.indices("teacher")])
    grey_free = ensure_world(tmp_path, **{**TINY, "n_train": 1}, colours="per_image")
    assert grey_free.split_fingerprint("teacher") != small.split_fingerprint("teacher")
    with pytest.raises(ConfigError, match="split"):
        small.split_fingerprint("training")


@pytest.mark.parametrize("v3", [False, True])
def test_rerender_reproduces_the_stored_views_and_greys_them(worlds, v3):
    w = worlds[int(v3)]
    index = w.indices("test")[[0, 3]]
    np.testing.assert_array_equal(world.rerender_views(w, index, None), w.views[index])  # the world's own colours
    grey = world.rerender_views(w, index, "grey")
    np.testing.assert_array_equal(_object_pixels(grey), _object_pixels(np.asarray(w.views[index])))
    assert (grey[..., 0] == grey[..., 2]).all()


def test_shapenet_train_frequencies_unbalance_only_the_train_split(tmp_path):
    base = {**TINY, "categories": ["chair", "table", "mug", "bowl"], "n_train": 6}
    uniform = ensure_world(tmp_path, **base)
    skewed = ensure_world(tmp_path, **base, train_frequencies="shapenet")
    counts = {c: int((skewed.labels[skewed.indices("train")] == i).sum()) for i, c in enumerate(skewed.categories)}
    assert counts["table"] > counts["chair"] > counts["mug"] >= 2 and counts["bowl"] >= 2
    assert abs(sum(counts.values()) - 4 * 6) <= 4  # the same total, up to rounding and the floor of 2
    expected = world.train_counts(skewed.params)
    assert counts == expected
    for split in ("teacher", "val", "test"):  # untouched: same objects, same teacher
        assert skewed.split_fingerprint(split) == uniform.split_fingerprint(split)
        np.testing.assert_array_equal(skewed.points[skewed.indices(split)], uniform.points[uniform.indices(split)])
    assert skewed.split_fingerprint("train") != uniform.split_fingerprint("train")

    def first(w, c):  # the first train objects of a category
        return [o for o in w.object_ids if o.startswith(f"{c}/train/")][:2]

    # they are the uniform world's objects
    assert first(skewed, "mug") == first(uniform, "mug")
    with pytest.raises(ConfigError, match="train_frequencies"):
        world.world_params(train_frequencies="zipf")
