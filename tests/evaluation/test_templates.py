"""Zero-shot with several prompt sets through evaluate_encoder: the single template from the feature store, averaged
template sets embedded with the teacher (keys zeroshot_<set>/...)."""
from __future__ import annotations

import pytest
import torch
from eval_toy import ToyCollection, tiny_encoder, toy_features

from captionless3d.errors import ConfigError
from captionless3d.evaluation.runner import evaluate_encoder
from captionless3d.teacher.classifier import TEMPLATE_SETS


class CountingTeacher:
    """Text embeddings = a fixed random vector per category name found in the text (templates average out to it)."""

    id = "stub:counting"
    dim = 16
    image_size = 16
    preprocess_id = "none"

    def __init__(self, categories: list[str]) -> None:
        g = torch.Generator().manual_seed(1)
        self.vectors = {c: torch.randn(self.dim, generator=g) for c in categories}
        self.texts: list[str] = []

    def encode_texts(self, texts, *, batch_size: int = 256, progress=None) -> torch.Tensor:
        self.texts += list(texts)
        rows = [next(v for c, v in self.vectors.items() if c in t) for t in texts]
        out = torch.stack(rows)
        return out / out.norm(dim=-1, keepdim=True)

    def encode_images(self, images, *, batch_size: int = 256, progress=None) -> torch.Tensor:  # pragma: no cover
        raise AssertionError("zero-shot must not encode images")


def test_template_sets_are_reported_under_their_own_prefix():
    col = ToyCollection({"test": 16})
    features = toy_features(col)
    teacher = CountingTeacher(col.categories)
    # the store prompts equal the teacher's class vectors, so both prompt sets must give identical predictions
    features.prompt_emb = torch.stack([teacher.vectors[c] / teacher.vectors[c].norm() for c in col.categories]).numpy()
    metrics = evaluate_encoder(tiny_encoder(), col, features, n_points=64, protocols=("zeroshot",),
                               templates=["single", "openai_imagenet"], teacher=teacher).metrics
    n_templates = len(TEMPLATE_SETS["openai_imagenet"])
    assert len(teacher.texts) == n_templates * len(col.categories)
    for key in ("top1", "top5", "class_mean_top1"):
        assert metrics[f"zeroshot/{key}"] == pytest.approx(metrics[f"zeroshot_openai_imagenet/{key}"])
    assert "zeroshot_single/top1" not in metrics


def test_template_set_needs_a_teacher_and_a_known_name():
    col = ToyCollection({"test": 8})
    with pytest.raises(ConfigError, match="needs the teacher"):
        evaluate_encoder(tiny_encoder(), col, toy_features(col), n_points=64, protocols=("zeroshot",),
                         templates=["single", "openai_imagenet"])
    with pytest.raises(ConfigError, match="nope"):
        evaluate_encoder(tiny_encoder(), col, toy_features(col), n_points=64, protocols=("zeroshot",),
                         templates=["nope"], teacher=CountingTeacher(col.categories))
    with pytest.raises(ConfigError, match="runner.templates"):
        evaluate_encoder(tiny_encoder(), col, toy_features(col), n_points=64, protocols=("zeroshot",),
                         templates="single")
