"""Reader collections go through the downstream stages that consume a ShapeCollection (feature store, datamodule)."""
import numpy as np
import torch
from fixtures.formats import write_pix3d, write_ulip_shapenet

from captionless3d.data.readers import read_pix3d, read_ulip_shapenet
from captionless3d.teacher.features import build_feature_store
from captionless3d.training.datamodule import PointViewDataModule


class ColourTeacher:
    """Tiny deterministic stand-in for a CLIP teacher: mean RGB + a bias, L2-normalised."""

    id = "colour-test"
    dim = 4
    image_size = 8
    preprocess_id = "none"

    def encode_images(self, images, batch_size=256, progress=False):
        x = torch.as_tensor(np.asarray(images), dtype=torch.float32).flatten(1, 2).mean(1) / 255
        x = torch.cat([x, torch.ones(len(x), 1)], 1)
        return x / x.norm(dim=1, keepdim=True)

    def encode_texts(self, texts, batch_size=256, progress=False):
        x = torch.tensor([[len(t), t.count("a"), t.count("e"), 1.0] for t in texts])
        return x / x.norm(dim=1, keepdim=True)


def test_ulip_collection_feeds_feature_store_and_datamodule(tmp_path):
    root, _ = write_ulip_shapenet(tmp_path / "ulip", {"02691156": 5, "03001627": 5}, n_points=300, angles=(0, 12, 24),
                                  with_depth=False)
    col = read_ulip_shapenet(root, n_points=256, image_size=8, view_angles=[0, 12, 24], points_in_memory=False)
    store = build_feature_store(col, ColourTeacher(), tmp_path / "features", progress=False)
    assert store.view_emb.shape == (10, 3, 4) and store.photo_emb.shape == (10, 0, 4)
    assert store.prompt_emb.shape == (2, 4)
    dm = PointViewDataModule(n_points=128, batch_size=4).attach(col, np.asarray(store.view_emb))
    batch = next(iter(dm.train_dataloader()))
    assert batch["points"].shape == (4, 128, 3) and batch["image_emb"].shape == (4, 4)
    val = next(iter(dm.val_dataloader()))
    assert set(val["label"].tolist()) <= {0, 1}


def test_pix3d_collection_feeds_feature_store(tmp_path):
    write_pix3d(tmp_path / "pix3d")
    col = read_pix3d(tmp_path / "pix3d", image_size=8, n_points=64, lazy=True)
    store = build_feature_store(col, ColourTeacher(), tmp_path / "features", progress=False)
    assert store.view_emb.shape == (8, 0, 4)
    assert store.photo_emb.shape == (8, 1, 4) and store.photo_masked_emb.shape == (8, 1, 4)
    assert not np.allclose(np.asarray(store.photo_emb), np.asarray(store.photo_masked_emb))
