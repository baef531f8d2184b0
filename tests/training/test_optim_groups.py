"""optim.loss_weight_decay: whether Adam's coupled L2 decay also pulls the loss's logit scale and bias."""
from types import SimpleNamespace

import pytest
import torch

from captionless3d.losses import WeightedDenominatorLoss
from captionless3d.training.module import CaptionlessModule


def _optimizer(loss_weight_decay: bool):
    encoder = torch.nn.Linear(3, 4)
    module = CaptionlessModule(encoder, WeightedDenominatorLoss(), weight_decay=0.5, warmup_epochs=0,
                               loss_weight_decay=loss_weight_decay)
    module._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=1)
    return module, module.configure_optimizers()["optimizer"]


@pytest.mark.parametrize("decay", [True, False])
def test_loss_parameters_are_decayed_only_when_asked(decay):
    module, optimizer = _optimizer(decay)
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    assert len(decay_of) == len(list(module.parameters()))  # every parameter once
    for p in module.encoder.parameters():
        assert decay_of[id(p)] == 0.5
    for p in module.loss.parameters():
        assert decay_of[id(p)] == (0.5 if decay else 0.0)
    # one step without any loss gradient: only decay moves the scale (Adam: the step has the sign of the decay)
    before = module.loss.scale.detach().clone()
    optimizer.zero_grad()
    for p in module.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    moved = not torch.equal(module.loss.scale.detach(), before)
    assert moved == decay
