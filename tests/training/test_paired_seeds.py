"""Paired seeds: with the same seed every variant starts from the same weights and sees the same batches, so a
per-seed difference between variants measures the variant, not the draw (scripts/compare.py's paired table)."""
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from captionless3d.hydra_utils import CONFIG_DIR
from captionless3d.pipeline import prepare
from captionless3d.train import build_module
from captionless3d.training.resume import batch_seed, seed_all

pytestmark = pytest.mark.slow


def _built(tmp_path, experiment: str, seed: int):
    overrides = ["data=synthetic_tiny", "teacher=synthetic_tiny", f"experiment={experiment}", f"seed={seed}",
                 f"paths.cache_dir={tmp_path / 'cache'}", f"paths.run_dir={tmp_path / 'run'}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3", job_name="test"):
        cfg = compose("train", overrides=overrides)
    L.seed_everything(seed, workers=True)
    prepared = prepare(cfg)
    L.seed_everything(seed, workers=True)  # as run_training does after the (possibly cold) caches
    datamodule, module = build_module(cfg, prepared)
    seed_all(batch_seed(seed, 0, -1))  # what DeterministicResume does before an epoch's iterator
    first = next(iter(datamodule.train_dataloader()))
    return module, first


def test_same_seed_same_start_and_batches_across_variants(tmp_path):
    baseline, batch_b = _built(tmp_path, "baseline", 3)
    avg, batch_a = _built(tmp_path, "avg", 3)
    assert len(avg.priors) == 2 and not baseline.priors
    for (name, wb), (_, wa) in zip(baseline.encoder.state_dict().items(), avg.encoder.state_dict().items()):
        assert torch.equal(wb, wa), name
    assert torch.equal(batch_b["index"], batch_a["index"]) and torch.equal(batch_b["points"], batch_a["points"])
    other, batch_o = _built(tmp_path, "baseline", 4)
    assert not all(torch.equal(a, b) for a, b in zip(baseline.encoder.state_dict().values(),
                                                     other.encoder.state_dict().values()))
    assert not torch.equal(batch_b["points"], batch_o["points"])
