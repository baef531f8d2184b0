import math

from captionless3d.training.schedule import warmup_cosine_lr


def test_warmup_then_cosine_matches_paper_formula():
    kw = dict(total_steps=100, warmup_steps=30, base_lr=1e-3, min_lr=1e-7)
    assert warmup_cosine_lr(0, **kw) == 1e-7
    assert math.isclose(warmup_cosine_lr(15, **kw), 1e-7 + (1e-3 - 1e-7) * 0.5)
    assert math.isclose(warmup_cosine_lr(30, **kw), 1e-3)
    progress = (65 - 30) / 70
    expected = (1e-3 - 1e-7) * 0.5 * (1 + math.cos(math.pi * progress)) + 1e-7
    assert math.isclose(warmup_cosine_lr(65, **kw), expected)
    assert math.isclose(warmup_cosine_lr(100, **kw), 1e-7)
