from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from captionless3d.errors import CacheError, ConfigError, DataError
from captionless3d.teacher import synthetic as syn
from captionless3d.teacher.openclip import create_teacher

MICRO = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def test_short_training_run_gives_a_loadable_openclip_checkpoint(fake_collection, tmp_path):
    images, captions = syn.teacher_training_data(fake_collection)
    assert images.shape[1] == fake_collection.v + fake_collection.k
    out = syn.train_synthetic_teacher(
        images, captions, tmp_path / "t", model_config=MICRO, model_name="micro-syn", epochs=2, batch_size=4,
        lr=1e-3, max_steps=3, data_fingerprint="fp-1", progress=False,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "synthetic_teacher"
    assert manifest["key"]["data_fingerprint"] == "fp-1" and manifest["key"]["config_hash"]
    assert manifest["extra"]["steps"] == 3 and manifest["extra"]["train_images_per_s"] > 0
    # the same path a real OpenCLIP checkpoint takes
    teacher = create_teacher("micro-syn", checkpoint=out / syn.CHECKPOINT_NAME, model_config=out / "micro-syn.json")
    assert teacher.id.startswith("openclip:micro-syn:sha256:")
    emb = teacher.encode_images(fake_collection.views[0])
    assert emb.shape == (fake_collection.v, 32) and torch.isfinite(emb).all()
    state = torch.load(out / syn.CHECKPOINT_NAME, weights_only=True)
    assert "logit_scale" in state["state_dict"]
    loaded = syn.load_synthetic_teacher(out, key=manifest["key"])
    assert loaded.id == teacher.id
    with pytest.raises(CacheError, match="data_fingerprint"):
        syn.load_synthetic_teacher(out, key={"data_fingerprint": "another"})


def test_training_input_validation(tmp_path):
    imgs = np.zeros((3, 2, 32, 32, 3), np.uint8)
    with pytest.raises(DataError, match="caption"):
        syn.train_synthetic_teacher(imgs, [["a"], ["b"]], tmp_path, model_config=MICRO, progress=False)
    with pytest.raises(DataError, match="uint8"):
        syn.train_synthetic_teacher(imgs.astype(np.float32), [["a"]] * 3, tmp_path, model_config=MICRO, progress=False)
    with pytest.raises(ConfigError, match="image_weights"):
        syn.train_synthetic_teacher(imgs, [["a"]] * 3, tmp_path, model_config=MICRO, image_weights=[1.0],
                                    progress=False)
    with pytest.raises(ConfigError, match="epochs"):
        syn.train_synthetic_teacher(imgs, [["a"]] * 3, tmp_path, model_config=MICRO, epochs=0, progress=False)


def test_ensure_trains_once_then_loads(fake_collection, tmp_path, monkeypatch):
    cfg = dict(model_config=MICRO, model_name="micro-syn", epochs=1, batch_size=4, max_steps=2, progress=False)
    first = syn.ensure_synthetic_teacher(fake_collection, tmp_path, **cfg)
    dirs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(dirs) == 1
    manifest = json.loads((dirs[0] / "manifest.json").read_text())
    zs = manifest["extra"]["zero_shot"]
    assert {"view_category_acc", "photo_category_acc", "view_subtype_acc_within", "chance_category"} <= set(zs)
    monkeypatch.setattr(syn, "train_synthetic_teacher", lambda *a, **k: pytest.fail("retrained"))
    second = syn.ensure_synthetic_teacher(fake_collection, tmp_path, **cfg)
    assert second.id == first.id
    with pytest.raises(ConfigError, match="bogus"):
        syn.ensure_synthetic_teacher(fake_collection, tmp_path, bogus=1)


def test_augment_and_helpers():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    y = syn._augment(x, gen)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert syn.subtype_phrase("chair/office swivel") == "office swivel chair"
    assert syn.subtype_phrase("bottle/wine bottle") == "wine bottle"


def test_torch_threads_restores_the_setting():
    from captionless3d.utils.threads import auto_threads, torch_threads

    before = torch.get_num_threads()
    assert 1 <= auto_threads() <= before
    with torch_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_background_swap_replaces_only_white_background_of_flagged_renders():
    import torch

    from captionless3d.teacher.synthetic import _swap_white_background

    x = torch.ones(4, 3, 8, 8)
    x[:, :, 2:6, 2:6] = 0.3  # the object
    swap = torch.tensor([True, True, False, True])
    out = _swap_white_background(x.clone(), swap, torch.Generator().manual_seed(0))
    assert torch.equal(out[2], x[2])  # not flagged: untouched
    assert torch.equal(out[:, :, 2:6, 2:6], x[:, :, 2:6, 2:6])  # object pixels untouched
    assert (out[[0, 1, 3], :, 0, 0] < 0.98).all()  # background replaced


def test_other_domain_pairs_a_render_with_a_photo_and_a_photo_with_a_render():
    rng = np.random.default_rng(0)
    view = np.array([0, 7, 8, 11, 3, 9] * 50)
    other = syn._other_domain(view, render_views=8, k=12, rng=rng)
    assert ((view < 8) == (other >= 8)).all()
    assert (other >= 0).all() and (other < 12).all()
    assert set(other[view < 8]) == {8, 9, 10, 11} and set(other[view >= 8]) == set(range(8))


def test_masked_photos_are_appended_with_a_black_background(fake_collection):
    plain, _ = syn.teacher_training_data(fake_collection)
    images, _ = syn.teacher_training_data(fake_collection, masked_photos=True)
    v, k = fake_collection.v, fake_collection.k
    assert images.shape[1] == v + 2 * k
    np.testing.assert_array_equal(images[:, : v + k], plain)
    idx = fake_collection.indices("teacher")
    masks = fake_collection.masks[idx]
    masked = images[:, v + k :]
    assert (masked[~masks] == 0).all()
    np.testing.assert_array_equal(masked[masks], fake_collection.photos[idx][masks])


def test_cross_domain_term_trains_and_changes_the_manifest_key(fake_collection, tmp_path):
    base = dict(model_config=MICRO, model_name="micro-syn", epochs=1, batch_size=4, max_steps=2, progress=False)
    plain = syn.ensure_synthetic_teacher(fake_collection, tmp_path, cross_domain_weight=0.0, masked_photos=False,
                                         **base)
    paired = syn.ensure_synthetic_teacher(fake_collection, tmp_path, cross_domain_weight=1.0, masked_photos=True,
                                          **base)
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(dirs) == 2 and plain.id != paired.id
    manifests = [json.loads((d / "manifest.json").read_text()) for d in dirs]
    trains = sorted((m["extra"]["train"]["cross_domain_weight"], m["extra"]["images_per_object"]) for m in manifests)
    v, k = fake_collection.v, fake_collection.k
    assert trains == [(0.0, v + k), (1.0, v + 2 * k)]
    # two images per object and step with the cross-domain term
    seen = sorted(m["extra"]["images_seen"] for m in manifests)
    assert seen[1] == 2 * seen[0]


def test_cross_domain_term_needs_both_domains(tmp_path):
    imgs = np.zeros((4, 3, 32, 32, 3), np.uint8)
    with pytest.raises(ConfigError, match="cross_domain_weight"):
        syn.train_synthetic_teacher(imgs, [["a"]] * 4, tmp_path, model_config=MICRO, cross_domain_weight=1.0,
                                    render_views=3, progress=False)
    with pytest.raises(ConfigError, match="cross_domain_weight"):
        syn.train_synthetic_teacher(imgs, [["a"]] * 4, tmp_path, model_config=MICRO, cross_domain_weight=-1.0,
                                    render_views=2, progress=False)


def test_masked_photos_without_masks_is_a_clear_error(fake_collection):
    fake_collection.masks = None
    with pytest.raises(DataError, match="fake: masked_photos needs photo masks"):
        syn.teacher_training_data(fake_collection, masked_photos=True)


def test_worlds_that_differ_only_in_student_splits_share_one_teacher(tmp_path, monkeypatch):
    from captionless3d.data.synthetic import ensure_world

    base = dict(seed=2, categories=["chair", "mug"], n_teacher=3, n_val=1, n_test=1, n_points=64, n_views=2,
                image_size=32, photos_per_object=1, progress=False)
    small = ensure_world(tmp_path / "worlds", n_train=1, **base)
    large = ensure_world(tmp_path / "worlds", n_train=4, **base)
    cfg = dict(model_config=MICRO, model_name="micro-syn", epochs=1, batch_size=4, max_steps=1, progress=False,
               eval_split=None)
    first = syn.ensure_synthetic_teacher(small, tmp_path / "teachers", **cfg)
    monkeypatch.setattr(syn, "train_synthetic_teacher", lambda *a, **k: pytest.fail("retrained"))
    assert syn.ensure_synthetic_teacher(large, tmp_path / "teachers", **cfg).id == first.id
    other = ensure_world(tmp_path / "worlds", n_train=1, **{**base, "n_teacher": 2})
    with pytest.raises(BaseException, match="retrained"):  # a different teacher split trains a new teacher
        syn.ensure_synthetic_teacher(other, tmp_path / "teachers", **cfg)
