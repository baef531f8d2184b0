"""mining.inspect on tiny arrays: hard negatives (dense and sparse), histogram and grid PNGs, the CLI."""
import numpy as np
import pytest
from PIL import Image

from captionless3d.errors import CacheError
from captionless3d.mining import PriorStore
from captionless3d.mining.inspect import (
    hard_negatives,
    histogram_png,
    load_prior,
    main,
    negatives_grid_png,
    prior_values,
)
from captionless3d.mining.sparse import build_sparse_prior


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    n = 12
    view = rng.normal(size=(n, 2, 4)).astype(np.float16)
    labels = np.array([0] * 6 + [1] * 6)
    mask = np.ones(n, bool)
    mask[-1] = False
    views = rng.integers(0, 255, size=(n, 2, 8, 8, 3), dtype=np.uint8)
    return view, labels, mask, views


def test_hard_negatives_dense_and_sparse(tiny):
    view, labels, mask, _ = tiny
    dense = PriorStore.build("i2i", view, labels, mask)
    negs = hard_negatives(dense, 0, top=3)
    row = dense.pairs([0], np.arange(12))[0].numpy()
    same = [j for j in range(1, 6)]
    expect = sorted(same, key=lambda j: (-row[j], j))[:3]
    assert [j for j, _ in negs] == expect and np.allclose([l for _, l in negs], row[expect])
    assert hard_negatives(dense, 11) == []
    sparse = build_sparse_prior("i2i", view, mask, k=3, block_size=4, progress=False)
    negs = hard_negatives(sparse, 2, top=2)
    assert len(negs) == 2 and negs[0][1] >= negs[1][1]
    vals = prior_values(dense)
    assert vals.size == 6 * 5 + 5 * 4  # off-diagonal entries of both category matrices


def test_pngs(tiny, tmp_path):
    _, _, _, views = tiny
    info = histogram_png(np.random.default_rng(0).random(1000), tmp_path / "h.png", bins=20)
    assert info["counts"].sum() == 1000 and Image.open(tmp_path / "h.png").size == (640, 360)
    size = negatives_grid_png(views, [(0, [(1, 0.9), (2, 0.8)]), (3, [(4, 0.7)])], tmp_path / "g.png", cell=16)
    assert size == (3 * 16, 2 * (16 + 14))
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape == (60, 48, 3)


def test_cli(tiny, tmp_path, capsys):
    view, labels, mask, views = tiny
    sparse = build_sparse_prior("i2i", view, mask, k=3, block_size=5, progress=False)
    sparse.save(tmp_path / "sp")
    PriorStore.build("i2l2", view, labels, mask, landmark_emb=np.eye(4, dtype=np.float32)[[0, 1, 2, 3]],
                     landmark_labels=np.array([0, 0, 1, 1])).save(tmp_path / "dn")
    np.save(tmp_path / "views.npy", views)
    out = main([f"prior_dir={tmp_path / 'sp'}", f"views={tmp_path / 'views.npy'}", f"out_dir={tmp_path / 'o'}",
                "samples=3", "top=2"])
    text = capsys.readouterr().out
    assert "SparsePriorStore" in text and text.count("object ") == 3 and " l=" in text
    assert (tmp_path / "o" / "prior_histogram.png").is_file() and (tmp_path / "o" / "negatives_grid.png").is_file()
    assert len(out["anchors"]) == 3
    out = main(["--prior-dir", str(tmp_path / "dn"), "--out-dir", str(tmp_path / "o2"), "--anchors", "0", "7"])
    assert [a for a, _ in out["anchors"]] == [0, 7] and len(out["anchors"][0][1]) == 5
    assert isinstance(load_prior(tmp_path / "dn"), PriorStore)
    with pytest.raises(CacheError):
        load_prior(tmp_path / "nothing")


def test_a_failed_png_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "h.png"
    histogram_png(np.random.default_rng(0).random(100), path, bins=10)
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as handle:
            handle.write(b"\x89PNG partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(CacheError, match="h.png"):
        histogram_png(np.random.default_rng(1).random(100), path, bins=10)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["h.png"]
