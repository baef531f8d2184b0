"""In-process checks of the resume machinery (fast): ResumableLoader replay, seeding, handler install/restore."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from captionless3d.training.resume import ResumableLoader, batch_seed
from captionless3d.training.signals import PreemptionCheckpoint


class _Noisy(Dataset):
    """Items drawn from the global RNGs (as the real dataset's augmentation does)."""

    def __len__(self):
        return 12

    def __getitem__(self, i):
        return torch.tensor([float(i), torch.rand(()).item(), float(np.random.rand())])


def _loader():
    return DataLoader(_Noisy(), batch_size=3, shuffle=True)


def _epoch(loader, epoch_fn=None):
    out = []
    for batch in loader:
        out.append((batch.clone(), torch.rand(()).item()))  # the RNG state the training step sees
    return out


def test_resumed_loader_replays_exactly_the_remaining_batches_and_rng_state():
    full = _epoch(ResumableLoader(_loader(), seed=7, epoch_fn=lambda: 2))
    assert len(full) == 4
    consumed = 0
    first = ResumableLoader(_loader(), seed=7, epoch_fn=lambda: 2)
    for _ in first:
        consumed += 1
        if consumed == 2:
            break
    state = first.state_dict()
    assert state == {"epoch": 2, "consumed": 2, "seed": 7, "rank": 0}
    torch.manual_seed(12345)  # a resumed process starts from an unrelated RNG state
    np.random.seed(999)
    resumed = ResumableLoader(_loader(), seed=7, epoch_fn=lambda: 2)
    resumed.load_state_dict(state)
    rest = _epoch(resumed)
    assert resumed.skipped == 2 and len(rest) == 2
    for (a, ra), (b, rb) in zip(rest, full[2:]):
        assert torch.equal(a, b) and ra == rb


def test_plain_dataloader_does_not_resume_which_is_why_the_wrapper_exists():
    torch.manual_seed(0)
    full = [b for b in _loader()]
    torch.manual_seed(1)  # any other process state
    again = [b for b in _loader()]
    assert not all(torch.equal(a, b) for a, b in zip(full, again))


def test_state_of_another_epoch_is_ignored_and_epochs_differ():
    epoch = {"value": 3}
    loader = ResumableLoader(_loader(), seed=7, epoch_fn=lambda: epoch["value"])
    loader.load_state_dict({"epoch": 2, "consumed": 4, "seed": 7})  # saved at the very end of epoch 2
    three = _epoch(loader)
    assert len(three) == 4 and loader.skipped == 0
    epoch["value"] = 4
    four = _epoch(loader)
    assert not torch.equal(three[0][0], four[0][0])


def test_batch_seed_depends_on_every_coordinate():
    seeds = {batch_seed(s, e, b, r) for s in (0, 1) for e in (0, 1) for b in (-1, 0, 1) for r in (0, 1)}
    assert len(seeds) == 24 and all(0 <= s < 2**63 for s in seeds)


def test_worker_init_fn_and_attributes_reach_the_wrapped_loader():
    inner = _loader()
    loader = ResumableLoader(inner, seed=0)
    loader.worker_init_fn = print
    assert inner.worker_init_fn is print and loader.batch_size == 3 and loader.sampler is inner.sampler
    assert len(loader) == 4


class _Trainer:
    strategy = None
    received_sigterm = False
    _accelerator_connector = None


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGUSR1"])
def test_handler_records_signal_instead_of_dying_and_restores_previous(signame):
    signum = getattr(signal, signame)
    previous = signal.getsignal(signum)
    cb = PreemptionCheckpoint(signals=[signame])
    cb.on_train_start(_Trainer(), None)
    try:
        os.kill(os.getpid(), signum)  # delivered to the main thread before the next bytecode
        assert cb.received == signum
    finally:
        cb.teardown(_Trainer(), None, "fit")
    assert signal.getsignal(signum) == previous


def test_unknown_signal_name_is_a_config_error():
    from captionless3d.errors import ConfigError

    with pytest.raises(ConfigError, match="SIGNOPE"):
        PreemptionCheckpoint(signals=["SIGNOPE"])


# --------------------------------------------------------------------------------------------- signals in a real fit


class _Tiny(__import__("lightning").LightningModule):
    """Linear regression; sends ``signum`` to its own process in the validation step of epoch ``signal_epoch``."""

    def __init__(self, signum, signal_epoch):
        super().__init__()
        self.lin = torch.nn.Linear(2, 1)
        self.signum, self.signal_epoch = signum, signal_epoch

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.lin(x), y)

    def validation_step(self, batch, batch_idx):
        if self.current_epoch == self.signal_epoch and batch_idx == 0:
            os.kill(os.getpid(), self.signum)
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.lin(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit_with_signal(tmp_path, capsys, signame, signal_epoch):
    import lightning as L
    from torch.utils.data import TensorDataset

    from captionless3d.training.checkpoint_io import AtomicCheckpointIO
    from captionless3d.training.signals import PreemptedExit

    data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
    cb = PreemptionCheckpoint(checkpoint_path=str(tmp_path / "checkpoints" / "last.ckpt"))
    last = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True, monitor="val/loss",
                                               enable_version_counter=False)
    trainer = L.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[cb, last], default_root_dir=tmp_path,
                        num_sanity_val_steps=0, plugins=[AtomicCheckpointIO()])
    previous = signal.getsignal(getattr(signal, signame))
    with pytest.raises(PreemptedExit) as info:
        trainer.fit(_Tiny(getattr(signal, signame), signal_epoch), DataLoader(data, batch_size=4),
                    DataLoader(data, batch_size=4))
    assert signal.getsignal(getattr(signal, signame)) == previous  # handlers restored after the exit
    return (info.value.code, capsys.readouterr().err,
            torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True))


def test_signal_during_validation_saves_at_epoch_end_not_mid_validation(tmp_path, capsys):
    code, err, saved = _fit_with_signal(tmp_path, capsys, "SIGTERM", signal_epoch=0)
    assert code == 143 and "pre-empted by SIGTERM at epoch 0, step 2: saved checkpoint" in err
    assert saved["global_step"] == 2 and saved["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 1


def test_signal_during_the_last_validation_saves_the_final_state_and_skips_the_rest(tmp_path, capsys):
    code, err, saved = _fit_with_signal(tmp_path, capsys, "SIGUSR1", signal_epoch=1)
    assert code == 138 and "pre-empted by SIGUSR1 at epoch 1, step 4: saved checkpoint" in err
    assert saved["global_step"] == 4  # on_fit_end (the test-set evaluation) never ran: PreemptedExit came first
