"""Zero-shot text classifiers: template sets, the averaging maths (brute force, OpenCLIP), batching."""
from __future__ import annotations

import zlib

import pytest
import torch

from captionless3d.errors import ConfigError, DataError
from captionless3d.teacher.classifier import TEMPLATE_SETS, template_set, zero_shot_classifier

CLASSES = ["chair", "table", "lamp", "sofa"]


class ToyTeacher:
    """encode_texts: a fixed random unit vector per text (seeded by its CRC32); records every text and batch."""

    id, dim, image_size, preprocess_id = "toy", 8, 4, "none"

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.batches: list[int] = []

    def vec(self, text: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(text.encode()))
        v = torch.randn(self.dim, generator=g) + 0.5  # not centred: the mean over templates is not ~0
        return v / v.norm()

    def encode_texts(self, texts, *, batch_size=256, progress=None):
        texts = list(texts)
        self.texts += texts
        self.batches += [len(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        return torch.stack([self.vec(t) for t in texts]) if texts else torch.zeros(0, self.dim)

    def encode_images(self, images, *, batch_size=256, progress=None):  # pragma: no cover - protocol only
        raise NotImplementedError


def brute_force(teacher: ToyTeacher, classes, templates) -> torch.Tensor:
    rows = []
    for c in classes:
        acc = torch.zeros(teacher.dim, dtype=torch.float64)
        for t in templates:
            v = teacher.vec(t.format(c) if isinstance(t, str) else t(c)).double()
            acc += v / v.norm()
        acc /= len(templates)
        rows.append(acc / acc.norm())
    return torch.stack(rows).float()


def test_single_template_is_the_papers_prompt():
    toy = ToyTeacher()
    w = zero_shot_classifier(toy, CLASSES)
    assert toy.texts == [f"a point cloud model of a {c}" for c in CLASSES]  # exactly, no period
    assert TEMPLATE_SETS["single"] == ["a point cloud model of a {}"]
    assert w.shape == (4, 8) and w.dtype == torch.float32
    torch.testing.assert_close(w, torch.stack([toy.vec(t) for t in toy.texts]))


@pytest.mark.parametrize("templates", ["simple_imagenet", ["a {}", "the {} here", "{}!"], "a photo of a {}."])
def test_matches_brute_force_and_is_batch_invariant(templates):
    toy = ToyTeacher()
    w = zero_shot_classifier(toy, CLASSES, templates, batch_size=3)
    resolved = template_set(templates)
    ref = brute_force(toy, CLASSES, resolved)
    torch.testing.assert_close(w, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(len(CLASSES)))
    assert max(toy.batches) <= 3 and sum(toy.batches) == len(CLASSES) * len(resolved)
    torch.testing.assert_close(zero_shot_classifier(ToyTeacher(), CLASSES, templates, batch_size=1000), w,
                               atol=1e-6, rtol=0)
    if len(resolved) > 1:  # averaging matters: not the first template alone
        assert not torch.allclose(w, brute_force(toy, CLASSES, resolved[:1]), atol=1e-3)


def test_openclip_template_sets_and_callables():
    from open_clip import zero_shot_metadata as meta

    assert len(TEMPLATE_SETS["openai_imagenet"]) == len(meta.OPENAI_IMAGENET_TEMPLATES) == 80
    assert len(TEMPLATE_SETS["simple_imagenet"]) == len(meta.SIMPLE_IMAGENET_TEMPLATES)
    for name, fns in (("openai_imagenet", meta.OPENAI_IMAGENET_TEMPLATES),
                      ("simple_imagenet", meta.SIMPLE_IMAGENET_TEMPLATES)):
        assert [t.format("office chair") for t in TEMPLATE_SETS[name]] == [f("office chair") for f in fns]
    # callables and format strings give the same classifier
    toy = ToyTeacher()
    a = zero_shot_classifier(toy, CLASSES, list(meta.SIMPLE_IMAGENET_TEMPLATES))
    b = zero_shot_classifier(toy, CLASSES, "simple_imagenet")
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_template_errors():
    with pytest.raises(ConfigError, match="unknown template set 'imagenet'.*openai_imagenet, simple_imagenet, single"):
        template_set("imagenet")
    with pytest.raises(ConfigError, match="empty"):
        template_set([])
    with pytest.raises(ConfigError, match="exactly one"):
        template_set(["a {} and a {}"])
    with pytest.raises(ConfigError, match="neither"):
        template_set([3])
    with pytest.raises(DataError, match="no class names"):
        zero_shot_classifier(ToyTeacher(), [])
    with pytest.raises(DataError, match="single string"):
        zero_shot_classifier(ToyTeacher(), "chair")


def test_matches_open_clip_build_zero_shot_classifier(tiny_teacher):
    """Same maths as OpenCLIP's own builder on a random tiny OpenCLIP model (it returns (D, C))."""
    from open_clip import build_zero_shot_classifier
    from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES

    ref = build_zero_shot_classifier(tiny_teacher.model, tiny_teacher.tokenizer, CLASSES, SIMPLE_IMAGENET_TEMPLATES,
                                     num_classes_per_batch=3)
    ours = zero_shot_classifier(tiny_teacher, CLASSES, "simple_imagenet", batch_size=5)
    assert ours.shape == (len(CLASSES), tiny_teacher.dim)
    torch.testing.assert_close(ours, ref.T.float(), atol=1e-5, rtol=0)
    single = zero_shot_classifier(tiny_teacher, CLASSES)
    torch.testing.assert_close(single, tiny_teacher.encode_texts([f"a point cloud model of a {c}" for c in CLASSES]),
                               atol=1e-6, rtol=0)
