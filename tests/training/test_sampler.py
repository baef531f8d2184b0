"""Mining-aware hard-group batch sampler (issue 4): coverage per epoch and rank set, determinism, the share of
hard pairs per batch as configured, neighbour mining from a PriorStore, and the data-module / Lightning wiring.

Run with ``pytest -s tests/training/test_sampler.py`` to see the measured shares.
"""
import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from captionless3d.errors import ConfigError, DataError
from captionless3d.mining import PriorStore
from captionless3d.mining.neighbours import neighbours_from_prior
from captionless3d.training.datamodule import PointViewDataModule
from captionless3d.training.sampler import (
    HardGroupBatchSampler,
    check_sampler_config,
    pair_shares,
)

N_CAT, PER_CAT, D = 8, 120, 16  # 960 objects; 768 train (96 per category), the rest val/test


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(N_CAT), PER_CAT)
    centres = rng.normal(size=(N_CAT, D)) * 2
    # within a category: a few sub-clusters, so neighbourhoods are structured
    sub = rng.normal(size=(N_CAT, 6, D))
    view = (centres[labels][:, None] + sub[labels, rng.integers(0, 6, labels.size)][:, None]
            + 0.3 * rng.normal(size=(labels.size, 3, D)))
    splits = np.where(np.tile(np.arange(PER_CAT), N_CAT) < 96, "train", "val").astype(object)
    splits[np.flatnonzero(splits == "val")[1::2]] = "test"
    store = PriorStore.build("i2i", view.astype(np.float16), labels, splits == "train")
    train = np.flatnonzero(splits == "train")
    return {"labels": labels, "view": view.astype(np.float32), "splits": splits, "store": store, "train": train}


def _brute_neighbours(stores, train, labels, k):
    """One object at a time from ``pairs``: same-category train objects by (score desc, position asc)."""
    n = train.size
    member = stores[0].has_prior(torch.as_tensor(train)).numpy()
    out = np.full((n, k), -1, np.int64)
    for p in range(n):
        same = [q for q in range(n) if q != p and member[p] and member[q] and labels[train[q]] == labels[train[p]]]
        if not same:
            continue
        score = np.zeros(len(same))
        for s in stores:
            row = s.pairs(torch.tensor([train[p]]), torch.as_tensor(train[same])).numpy()[0].astype(np.float64)
            score += row / row.mean() if len(stores) > 1 else row
        ranked = sorted(range(len(same)), key=lambda i: (-score[i], same[i]))[:k]
        out[p, : len(ranked)] = [same[i] for i in ranked]
    return out


# ------------------------------------------------------------------------------------------------ neighbours
def test_neighbours_from_prior_matches_brute_force(world):
    rng = np.random.default_rng(1)
    # a shuffled subset of the train objects as the dataset (positions != global order), one small category
    train = rng.permutation(world["train"])
    small = train[world["labels"][train] == 7][:3]
    train = np.concatenate([train[world["labels"][train] < 2], small])
    train = rng.permutation(train)
    store = world["store"]
    got = neighbours_from_prior(store, train, k=5)
    ref = _brute_neighbours([store], train, world["labels"], 5)
    np.testing.assert_array_equal(got, ref)
    cat7 = np.flatnonzero(world["labels"][train] == 7)
    assert (got[cat7, 2:] == -1).all() and (got[cat7, :2] >= 0).all()  # 3 members: 2 neighbours, rest -1
    assert (world["labels"][train][np.where(got >= 0, got, 0)] == world["labels"][train][:, None])[got >= 0].all()

    # AVG: two stores with the same members, ranked by the mean of row-normalised priors
    other = PriorStore.build("i2i", world["view"][:, :1].astype(np.float16), world["labels"],
                             world["splits"] == "train")
    got2 = neighbours_from_prior([store, other], train, k=5)
    np.testing.assert_array_equal(got2, _brute_neighbours([store, other], train, world["labels"], 5))

    # objects without a prior (val) get no neighbours
    val = np.flatnonzero(world["splits"] == "val")[:4]
    mixed = np.concatenate([train[:20], val])
    assert (neighbours_from_prior(store, mixed, 3)[-4:] == -1).all()


# ------------------------------------------------------------------------------------------------ coverage
@pytest.mark.parametrize("replicas", [1, 2, 4])
@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_every_index_exactly_once_per_epoch_over_ranks(world, replicas, fraction):
    nb = neighbours_from_prior(world["store"], world["train"], 8)
    n, bsz = nb.shape[0], 32
    assert n % (bsz * replicas) == 0
    for epoch in (0, 3):
        per_rank = []
        for rank in range(replicas):
            s = HardGroupBatchSampler(nb, bsz, group_size=4, hard_fraction=fraction, num_replicas=replicas, rank=rank,
                                      seed=7)
            s.set_epoch(epoch)
            batches = list(s)
            assert len(batches) == len(s) == n // (bsz * replicas)
            assert all(len(b) == bsz and len(set(b)) == bsz for b in batches)
            per_rank.append(np.concatenate(batches))
        flat = np.concatenate(per_rank)
        counts = np.bincount(flat, minlength=n)
        assert (counts == 1).all(), f"R={replicas} f={fraction} epoch={epoch}: not exactly once"
        for a in range(replicas):  # ranks are disjoint
            for b in range(a + 1, replicas):
                assert not set(per_rank[a].tolist()) & set(per_rank[b].tolist())
    print(f"\n[coverage] n={n} B={bsz} ranks={replicas} hard_fraction={fraction}: every index exactly once (2 epochs)")


@pytest.mark.parametrize("replicas", [1, 3])
def test_drop_and_pad_rules_when_not_divisible(world, replicas):
    nb = neighbours_from_prior(world["store"], world["train"], 8)[:770 - 2 * 96]  # n = 578
    nb = np.where(nb < nb.shape[0], nb, -1)
    n, bsz = nb.shape[0], 32
    for drop_last in (True, False):
        flat, lengths = [], []
        for rank in range(replicas):
            s = HardGroupBatchSampler(nb, bsz, group_size=4, hard_fraction=0.5, drop_last=drop_last,
                                      num_replicas=replicas, rank=rank)
            batches = list(s)
            lengths.append(len(batches))
            assert all(len(b) == bsz and len(set(b)) == bsz for b in batches)
            flat += [i for b in batches for i in b]
        assert len(set(lengths)) == 1
        counts = np.bincount(flat, minlength=n)
        if drop_last:
            assert counts.max() == 1 and counts.sum() == (n // (bsz * replicas)) * bsz * replicas
        else:
            total = -(-n // (bsz * replicas)) * bsz * replicas
            assert counts.min() == 1 and counts.sum() == total


# ------------------------------------------------------------------------------------------------ determinism
def test_deterministic_per_seed_and_epoch_and_lightning_sets_the_epoch(world):
    nb = neighbours_from_prior(world["store"], world["train"], 8)

    def make(seed=0):
        return HardGroupBatchSampler(nb, 32, group_size=4, hard_fraction=0.5, num_replicas=1, rank=0, seed=seed)

    a, b = make(), make()
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    assert list(make(1)) != list(a)
    # Lightning's own epoch hook reaches the batch sampler (through batch_sampler.sampler.set_epoch)
    loader = DataLoader(range(nb.shape[0]), batch_sampler=make())
    _set_sampler_epoch(loader, 5)
    assert loader.batch_sampler.epoch == 5
    ref = make()
    ref.set_epoch(5)
    assert [x.tolist() for x in loader] == list(ref)


# ------------------------------------------------------------------------------------------------ share of hard pairs
def test_share_of_hard_pairs_rises_as_configured(world):
    EPOCHS = 12  # noqa: N806  (per-batch shares are noisy: std ~0.05 per batch)
    labels = world["labels"][world["train"]]
    nb = neighbours_from_prior(world["store"], world["train"], 16)
    rows = []
    for group_size, fraction in [(4, 0.0), (4, 0.25), (4, 0.5), (4, 0.75), (4, 1.0), (2, 0.5), (8, 0.5)]:
        shares, stats = [], []
        for epoch in range(EPOCHS):
            s = HardGroupBatchSampler(nb, 32, group_size=group_size, hard_fraction=fraction, num_replicas=1, rank=0,
                                      seed=0)
            shares.append(pair_shares(s.global_plan(epoch), labels, nb))
            stats.append(s.last_plan_stats)
        rows.append((group_size, fraction, np.mean([x["same_category"] for x in shares]),
                     np.mean([x["topk"] for x in shares]),
                     np.mean([x["grouped_share"] for x in stats]), np.mean([x["mean_group_size"] for x in stats])))
    random_same = (labels.size / N_CAT - 1) / (labels.size - 1)
    random_topk = 16 / (labels.size - 1)
    print(f"\n[share] n={labels.size}, {N_CAT} categories, B=32, topk=16, {EPOCHS} epochs x 24 batches; random "
          f"expectation: same-category {random_same:.4f}, top-k {random_topk:.4f}")
    print("[share] group_size hard_fraction  same_category  topk    slots_in_groups  mean_group_size")
    for g, f, same, topk, grouped, size in rows:
        print(f"[share] {g:10d} {f:13.2f}  {same:13.4f}  {topk:.4f}  {grouped:15.3f}  {size:15.2f}")
    by_fraction = [r for r in rows if r[0] == 4]
    same = [r[2] for r in by_fraction]
    topk = [r[3] for r in by_fraction]
    assert all(x < y for x, y in zip(same, same[1:])), f"same-category share does not rise: {same}"
    assert all(x < y for x, y in zip(topk, topk[1:])), f"top-k share does not rise: {topk}"
    assert abs(same[0] - random_same) < 0.02 and abs(topk[0] - random_topk) < 0.01  # f=0: plain random batches
    # G=4, B=32, f=1: 8 groups x 12 ordered pairs = 96 of 992 pairs are within-group, i.e. +~0.1 (minus late partial
    # groups)
    assert same[-1] - same[0] > 0.05 and topk[-1] > 4 * topk[0]
    # bigger groups at the same fraction put more mutual neighbours together
    g2, g4, g8 = rows[5], rows[2], rows[6]
    assert g2[2] < g4[2] < g8[2]


def test_config_validation():
    assert check_sampler_config({}, 32) == {"group_size": 4, "hard_fraction": 0.5, "topk": 16, "drop_last": True}
    for bad in ({"group_size": 1}, {"topk": 2, "group_size": 4}, {"hard_fraction": 1.5}, {"hard_fraction": 0.03},
                {"colour": 1}, {"drop_last": "yes"}):
        with pytest.raises(ConfigError):
            check_sampler_config(bad, 32)
    with pytest.raises(DataError):
        HardGroupBatchSampler(np.array([[5]]), 1)
    with pytest.raises(ConfigError, match="no full batch"):
        HardGroupBatchSampler(np.full((40, 2), -1), 16, num_replicas=4, rank=0)
    with pytest.raises(ConfigError, match="use_distributed_sampler"):
        HardGroupBatchSampler(SequentialSampler(range(3)), 1)


# ------------------------------------------------------------------------------------------------ data module
class FakeCollection:
    def __init__(self, labels, splits, n_points=48, seed=0):
        rng = np.random.default_rng(seed)
        self.points = rng.normal(size=(labels.size, n_points, 3)).astype(np.float32)
        self.labels = labels.astype(np.int64)
        self.splits = np.asarray(splits, dtype=str)
        self.object_ids = [f"obj{i}" for i in range(labels.size)]

    def indices(self, split):
        return np.flatnonzero(self.splits == split)


def _module(world, **kwargs):
    col = FakeCollection(world["labels"], world["splits"])
    return col, PointViewDataModule(n_points=32, batch_size=32, rotation_degrees=0, **kwargs)


def test_datamodule_without_sampler_is_unchanged(world):
    col, dm = _module(world)
    dm.attach(col, world["view"], priors=[world["store"]])  # priors are ignored when the sampler is off
    assert dm.neighbours is None
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert type(train.batch_sampler) is BatchSampler and isinstance(train.sampler, RandomSampler)
    assert train.batch_size == 32 and train.drop_last
    assert isinstance(val.sampler, SequentialSampler) and val.batch_size == 32


def test_datamodule_with_sampler_serves_hard_groups(world):
    col, dm = _module(world, sampler={"group_size": 4, "hard_fraction": 0.5, "topk": 8})
    dm.attach(col, world["view"], priors=[world["store"]])
    assert dm.neighbours.shape == (world["train"].size, 8)
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, HardGroupBatchSampler) and len(loader) == world["train"].size // 32
    seen = []
    for batch in loader:
        assert batch["points"].shape == (32, 32, 3) and batch["image_emb"].shape == (32, D)
        assert (batch["label"].numpy() == world["labels"][batch["index"].numpy()]).all()
        seen += batch["index"].tolist()
    assert sorted(seen) == world["train"].tolist()  # global indices, the train split exactly once
    positions = np.searchsorted(world["train"], np.asarray(seen).reshape(-1, 32))
    shares = pair_shares(positions, world["labels"][world["train"]], dm.neighbours)
    assert shares["topk"] > 3 * 8 / (world["train"].size - 1)  # 3x the random share of top-8 pairs
    # ready neighbours instead of priors
    col2, dm2 = _module(world, sampler={"topk": 8})
    dm2.attach(col2, world["view"], neighbours=dm.neighbours)
    assert np.array_equal(dm2.neighbours, dm.neighbours)
    with pytest.raises(DataError):
        dm2.attach(col2, world["view"], neighbours=dm.neighbours[:-1])


def test_datamodule_sampler_needs_neighbours(world):
    col, dm = _module(world, sampler={"topk": 8})
    dm.attach(col, world["view"])
    with pytest.raises(ConfigError, match="priors"):
        dm.train_dataloader()


def test_datamodule_sampler_under_ddp(world):
    col, dm = _module(world, sampler={"topk": 8})
    dm.attach(col, world["view"], priors=[world["store"]])
    dm.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="use_distributed_sampler"):
        dm.train_dataloader()
    dm.trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                           use_distributed_sampler=False)
    sampler = dm.train_dataloader().batch_sampler
    assert (sampler.num_replicas, sampler.rank) == (2, 0) and len(sampler) == world["train"].size // 64
    val = dm.val_dataloader()
    assert isinstance(val.sampler, DistributedSampler) and val.sampler.num_replicas == 2 and not val.sampler.shuffle


class _Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[int, list[list[int]]] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).append(batch["index"].tolist())
        return (self.w * batch["points"].mean()).sum() + self.w.square().sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_fit_reshuffles_per_epoch(world):
    col, dm = _module(world, sampler={"group_size": 4, "hard_fraction": 0.5, "topk": 8})
    dm.attach(col, world["view"], priors=[world["store"]])
    module = _Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        use_distributed_sampler=False)
    trainer.fit(module, datamodule=dm)
    ref = HardGroupBatchSampler(dm.neighbours, 32, group_size=4, hard_fraction=0.5, num_replicas=1, rank=0,
                                seed=dm.seed)
    for epoch in (0, 1):
        expected = [world["train"][b].tolist() for b in ref.global_plan(epoch)]
        assert module.seen[epoch] == expected
    assert module.seen[0] != module.seen[1]


def test_experiment_config_builds_the_sampler_module():
    from hydra import compose, initialize_config_dir

    from captionless3d.hydra_utils import CONFIG_DIR, instantiate

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=avg_sampler", "trainer=ddp"])
        plain = compose("train", overrides=["experiment=avg"])
    assert cfg.trainer.use_distributed_sampler is False and list(cfg.mining.kinds) == ["i2i", "i2l2"]
    assert cfg.mining.guard is None
    dm = instantiate(cfg.data.loader, key="data.loader")
    assert dm.sampler_config == {"group_size": 4, "hard_fraction": 0.5, "topk": 16, "drop_last": True}
    assert instantiate(plain.data.loader, key="data.loader").sampler_config is None
