"""A released ULIP PointNeXt checkpoint as a baseline row: built through its Hydra config around the teacher."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fixtures.formats import ulip_checkpoint
from omegaconf import OmegaConf

from captionless3d.errors import CheckpointError, ConfigError
from captionless3d.hydra_utils import CONFIG_DIR, instantiate
from captionless3d.models import build_point_encoder


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    source = build_point_encoder("pointnext_s", in_channels=4, embed_dim=24, head_dropout=0.0).eval()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.05 * torch.randn_like(p))
        source.head.head[-1][0].bias.zero_()  # ULIP's pc_projection has no bias
    path = tmp_path_factory.mktemp("ulip") / "pointnext_ulip.pt"
    torch.save(ulip_checkpoint(source), path)
    return source, path


def _config(pretrained: Path | None):
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "baseline" / "ulip_pointnext.yaml").ulip_pointnext
    if pretrained is not None:
        cfg.pretrained = str(pretrained)
    return cfg


def test_released_checkpoint_reproduces_the_source_model(released):
    source, path = released
    encoder = instantiate(_config(path), key="baseline.ulip_pointnext", teacher=SimpleNamespace(dim=24))
    x = torch.rand(2, 256, 3) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(encoder(x), source(x), atol=1e-5)
    assert not encoder.training


def test_wrong_teacher_dimension_and_missing_file_are_clear(released, tmp_path):
    _, path = released
    with pytest.raises(CheckpointError, match="pc_projection|shape"):
        instantiate(_config(path), key="baseline.ulip_pointnext", teacher=SimpleNamespace(dim=32))
    with pytest.raises(CheckpointError, match="missing.pt"):
        instantiate(_config(tmp_path / "missing.pt"), key="baseline.ulip_pointnext", teacher=SimpleNamespace(dim=24))
    with pytest.raises(ConfigError, match="pretrained"):
        from captionless3d.baselines import create_pretrained_encoder

        create_pretrained_encoder(SimpleNamespace(dim=24), pretrained=None)
