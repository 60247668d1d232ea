"""Image-classification data for the contextual bandit (E2): digits (bundled) and MNIST (IDX).

Both loaders return a `Dataset` of float32 images flattened to (n, pixels), scaled to [0, 1]
and normalised, and int64 labels in 0..9.

- `digits`: scikit-learn's bundled 8×8 digits (1,797 images, no download). Pixels are 0..16,
  scaled by 1/16, then normalised with the training split's pixel mean and std (the analogue
  of MNIST's 0.1307 / 0.3081). The held-out third is a fixed split (same for every seed).
- `mnist`: the four standard IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`) read from a
  directory the user gives. Pixels /255, then (x − 0.1307) / 0.3081 as in the paper.

A missing or malformed file raises `DatasetError` with one line naming the file.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
PIXELS = {"digits": 64, "mnist": 784}
DIGITS_TEST_FRACTION = 1 / 3
DIGITS_SPLIT_SEED = 0  # the held-out split is part of the dataset, not of a trial's seed
IDX_DTYPES = {0x08: np.uint8}  # the only element type MNIST uses


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message is one line naming the file."""


@dataclass(frozen=True)
class Dataset:
    train_x: Tensor  # (n_train, pixels) float32, normalised
    train_y: Tensor  # (n_train,) int64 in 0..9
    test_x: Tensor
    test_y: Tensor

    @property
    def pixels(self) -> int:
        return self.train_x.shape[1]

    def without_classes(self, exclude: tuple[int, ...]) -> tuple[Dataset, list[int]]:
        """Drop the excluded classes; relabel the rest 0..A−1 (returns the kept classes)."""
        kept = [c for c in range(10) if c not in exclude]
        relabel = torch.full((10,), -1, dtype=torch.long)
        relabel[kept] = torch.arange(len(kept))
        tr = relabel[self.train_y] >= 0
        te = relabel[self.test_y] >= 0
        data = Dataset(self.train_x[tr], relabel[self.train_y[tr]],
                       self.test_x[te], relabel[self.test_y[te]])
        return data, kept


def load(name: str, data_dir: str | None = None) -> Dataset:
    if name == "digits":
        return load_digits()
    if name == "mnist":
        if data_dir is None:
            raise DatasetError("mnist needs data_dir: a folder with the four IDX files")
        return load_mnist(data_dir)
    raise DatasetError(f"unknown dataset {name!r}; expected digits or mnist")


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = torch.as_tensor(bunch.data, dtype=torch.float32) / 16.0
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    n_test = int(round(len(labels) * DIGITS_TEST_FRACTION))
    test, train = order[:n_test], order[n_test:]
    mean = images[train].mean()
    std = images[train].std()
    images = (images - mean) / std
    return Dataset(images[train], labels[train], images[test], labels[test])


def mnist_paths(data_dir: str | Path) -> dict[str, Path]:
    """The four IDX files in `data_dir` (plain or .gz); DatasetError names the first missing."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DatasetError(f"MNIST folder {str(folder)!r} does not exist")
    paths = {}
    for key, stem in MNIST_FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                paths[key] = candidate
                break
        else:
            raise DatasetError(f"MNIST file {stem}[.gz] not found in {str(folder)!r}")
    return paths


def load_mnist(data_dir: str | Path) -> Dataset:
    paths = mnist_paths(data_dir)
    train_x = read_idx(paths["train_images"], ndim=3)
    train_y = read_idx(paths["train_labels"], ndim=1)
    test_x = read_idx(paths["test_images"], ndim=3)
    test_y = read_idx(paths["test_labels"], ndim=1)
    for images, labels, name in ((train_x, train_y, "train"), (test_x, test_y, "t10k")):
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(f"MNIST {name}: {images.shape[0]} images but "
                               f"{labels.shape[0]} labels")
        if images.shape[1:] != (28, 28):
            raise DatasetError(f"MNIST {name}: expected 28×28 images, got {images.shape[1:]}")
        if labels.size and labels.max() > 9:
            raise DatasetError(f"MNIST {name}: label {int(labels.max())} outside 0..9")

    def images(raw: np.ndarray) -> Tensor:
        x = torch.from_numpy(raw.reshape(raw.shape[0], -1).astype(np.float32)) / 255.0
        return (x - MNIST_MEAN) / MNIST_STD

    def labels(raw: np.ndarray) -> Tensor:
        return torch.as_tensor(raw.astype(np.int64))

    return Dataset(images(train_x), labels(train_y), images(test_x), labels(test_y))


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0x0000TTNN, NN big-endian uint32 dims."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number)")
    dtype_code, dims = raw[2], raw[3]
    if dtype_code not in IDX_DTYPES:
        raise DatasetError(f"{path}: unsupported IDX element type 0x{dtype_code:02x}")
    if ndim is not None and dims != ndim:
        raise DatasetError(f"{path}: expected a {ndim}-d IDX array, got {dims}-d")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DatasetError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    dtype = IDX_DTYPES[dtype_code]
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if len(raw) - header != expected:
        raise DatasetError(f"{path}: expected {expected} data bytes for shape {shape}, "
                           f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped if the name ends in .gz); used by tests."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
