"""The IDX loader on tiny files written here: where it looks, what it checks, what it caches."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from lrsweep.ml import data
from tests.conftest import write_idx


@pytest.fixture(autouse=True)
def no_user_dirs(monkeypatch, tmp_path):
    """Hide the machine's own copies so each test sees only the folders it sets up."""
    monkeypatch.delenv(data.ENV_DATA_DIR, raising=False)
    monkeypatch.setattr(data, "KERAS_CACHE_DIR", tmp_path / "no-keras-cache")
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    data._load_folder.cache_clear()


def test_loads_scaled_images_and_labels(idx_dir):
    dataset = data.load(dir=str(idx_dir))
    assert dataset.x_train.shape == (20, 28, 28) and dataset.x_test.shape == (10, 28, 28)
    assert dataset.x_train.dtype == np.float32 and 0.0 <= dataset.x_train.min() <= dataset.x_train.max() <= 1.0
    raw = data.read_idx(idx_dir / "train-images-idx3-ubyte.gz", "images")
    np.testing.assert_allclose(dataset.x_train, raw / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(dataset.y_train, np.arange(20) % 10)
    assert dataset.source == str(idx_dir)


def test_subset_keeps_the_first_examples(idx_dir):
    full, head = data.load(dir=str(idx_dir)), data.load(dir=str(idx_dir), train_size=5, test_size=3)
    assert head.sizes == (5, 3)
    np.testing.assert_array_equal(head.x_train, full.x_train[:5])
    with pytest.raises(ValueError, match=r"`data.train_size` must be in 1..20. Received: train_size=21"):
        data.load(dir=str(idx_dir), train_size=21)


def test_search_order_config_then_env_then_keras_cache_then_debian(idx_dir, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    for f in idx_dir.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(data, "DEBIAN_DIR", idx_dir)
    assert data.locate() == idx_dir
    monkeypatch.setattr(data, "KERAS_CACHE_DIR", other)
    assert data.locate() == other
    monkeypatch.setenv(data.ENV_DATA_DIR, str(idx_dir))
    assert data.locate() == idx_dir
    assert data.locate(other) == other


def test_nothing_found_means_none(tmp_path):
    assert data.locate() is None


def test_files_are_parsed_once_per_process(idx_dir):
    data.load(dir=str(idx_dir))
    data.load(dir=str(idx_dir), train_size=4)
    info = data._load_folder.cache_info()
    assert (info.misses, info.hits) == (1, 1)


def test_named_folder_without_the_files_is_an_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(data.DataError, match=r"data.dir=.*empty is missing t10k-images-idx3-ubyte.gz.*apt-get install"):
        data.load(dir=str(empty))
    monkeypatch.setenv(data.ENV_DATA_DIR, str(empty))
    with pytest.raises(data.DataError, match=r"\$LRSWEEP_DATA_DIR=.*empty is missing"):
        data.load()


def test_incomplete_folder_is_an_error(idx_dir):
    (idx_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DataError, match="is missing t10k-labels-idx1-ubyte.gz"):
        data.load(dir=str(idx_dir))


def test_wrong_magic_number(idx_dir):
    write_idx(idx_dir / "train-labels-idx1-ubyte.gz", np.zeros(20), magic=2051)
    with pytest.raises(
        data.DataError,
        match=r"train-labels-idx1-ubyte.gz: IDX magic number must be 2049 for labels. Received: 2051",
    ):
        data.load(dir=str(idx_dir))


def test_truncated_file(idx_dir):
    path = idx_dir / "t10k-images-idx3-ubyte.gz"
    body = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(body[:-100]))
    with pytest.raises(
        data.DataError,
        match=r"t10k-images-idx3-ubyte.gz: header declares \(10, 28, 28\) = 7840 values but the file holds 7740",
    ):
        data.load(dir=str(idx_dir))


def test_not_gzip(idx_dir):
    (idx_dir / "train-images-idx3-ubyte.gz").write_bytes(b"not a gzip file at all")
    with pytest.raises(data.DataError, match="train-images-idx3-ubyte.gz: cannot be read as gzip"):
        data.load(dir=str(idx_dir))


def test_count_mismatch(idx_dir):
    write_idx(idx_dir / "train-labels-idx1-ubyte.gz", np.zeros(19))
    with pytest.raises(data.DataError, match="holds 20 images but .*train-labels-idx1-ubyte.gz holds 19 labels"):
        data.load(dir=str(idx_dir))


def test_wrong_image_shape(idx_dir):
    write_idx(idx_dir / "train-images-idx3-ubyte.gz", np.zeros((20, 32, 32)))
    with pytest.raises(data.DataError, match=r"images must be \(28, 28\). Received: \(32, 32\)"):
        data.load(dir=str(idx_dir))


def test_label_out_of_range(idx_dir):
    write_idx(idx_dir / "t10k-labels-idx1-ubyte.gz", np.full(10, 10))
    with pytest.raises(data.DataError, match=r"labels must be in 0..9. Received: 10"):
        data.load(dir=str(idx_dir))


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(), reason="needs dataset-fashion-mnist")
def test_the_real_files_validate():
    data._load_folder.cache_clear()
    x_train, y_train, x_test, y_test = data._load_folder(Path("/usr/share/datasets/fashion-mnist"))
    assert (x_train.shape, x_test.shape) == ((60000, 28, 28), (10000, 28, 28))
    assert np.bincount(y_train).tolist() == [6000] * 10 and np.bincount(y_test).tolist() == [1000] * 10
