"""Fashion-MNIST read offline from its four IDX files, validated, and loaded once per process.

Validation (what each epoch is scored on, and what a sweep ranks) is by default a fixed held-out part of the
training examples (`data.validation_size`), so the test set is scored once, at the end, by a model chosen without
it; `validation_size=None` validates on the test set itself, as the tutorial does.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
IMAGE_SHAPE = (28, 28)
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# IDX magic numbers: 0x08 = unsigned byte, last byte = number of dimensions.
_MAGIC_IMAGES = 0x00000803
_MAGIC_LABELS = 0x00000801

ENV_DATA_DIR = "LRSWEEP_DATA_DIR"
KERAS_CACHE_DIR = Path("~/.keras/datasets/fashion-mnist")
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# The permutation of the training examples whose last `validation_size` are held out: one constant seed, so every
# run, seed and sweep is scored on the same examples (and a smaller held-out set is part of a larger one).
VALIDATION_SEED = 20_240_601
VALIDATION_IS_TEST = "test set"
FIX_HINT = (
    "Install the data with `apt-get install -y dataset-fashion-mnist` "
    f"(puts the four IDX files in {DEBIAN_DIR}) or point `data.dir=...` / ${ENV_DATA_DIR} at a folder holding "
    f"{', '.join(FILES.values())}."
)


class DataError(ValueError):
    """The Fashion-MNIST files are missing, incomplete or corrupt."""


@dataclass(frozen=True)
class Dataset:
    """Images scaled to [0, 1] as float32, labels as int64, and where they came from.

    `x_val, y_val` are what each epoch is validated on: held-out training examples, or the test set itself
    (then the very same arrays as `x_test, y_test`); `validation` says which, e.g. "held-out 10000 of train".
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    x_val: np.ndarray | None = None  # None: the test set
    y_val: np.ndarray | None = None
    validation: str = VALIDATION_IS_TEST

    def __post_init__(self):
        if self.x_val is None:
            object.__setattr__(self, "x_val", self.x_test)
            object.__setattr__(self, "y_val", self.y_test)

    @property
    def validates_on_test(self) -> bool:
        """Whether the validation data is the test set (then there is no separate test score)."""
        return self.validation == VALIDATION_IS_TEST

    @property
    def sizes(self) -> tuple[int, int]:
        return len(self.x_train), len(self.x_test)


def read_idx(path: Path, kind: str) -> np.ndarray:
    """Reads one gzipped IDX file of uint8 values, checking its header against its contents.

    Args:
        path: the `.gz` file.
        kind: "images" (3-D, magic 2051) or "labels" (1-D, magic 2049).

    Raises:
        DataError: naming the file, what was expected and what was found.
    """
    expected_magic, ndim = (_MAGIC_IMAGES, 3) if kind == "images" else (_MAGIC_LABELS, 1)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be read as gzip ({e}). The file is corrupt. {FIX_HINT}") from e
    header_len = 4 * (1 + ndim)
    if len(raw) < header_len:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX {kind} header. {FIX_HINT}")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(f"{path}: IDX magic number must be {expected_magic} for {kind}. Received: {magic}. {FIX_HINT}")
    dims = tuple(int.from_bytes(raw[4 * (i + 1) : 4 * (i + 2)], "big") for i in range(ndim))
    body = np.frombuffer(raw, dtype=np.uint8, offset=header_len)
    if body.size != int(np.prod(dims)):
        raise DataError(
            f"{path}: header declares {dims} = {int(np.prod(dims))} values but the file holds {body.size}. "
            f"The file is truncated or corrupt. {FIX_HINT}"
        )
    return body.reshape(dims)


def candidate_dirs(data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """The folders searched for the IDX files, in order, each with how it was chosen."""
    found = []
    if data_dir:
        found.append(("data.dir", Path(data_dir).expanduser()))
    if os.environ.get(ENV_DATA_DIR):
        found.append((f"${ENV_DATA_DIR}", Path(os.environ[ENV_DATA_DIR]).expanduser()))
    found.append(("Keras cache", KERAS_CACHE_DIR.expanduser()))
    found.append(("Debian package", DEBIAN_DIR))
    return found


def locate(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first candidate folder that holds all four files, or None.

    A folder the user named (`data.dir`, `$LRSWEEP_DATA_DIR`) that lacks any file is an error rather than
    silently skipped, and so is a folder holding only some of the four files.
    """
    for origin, folder in candidate_dirs(data_dir):
        present = [name for name in FILES.values() if (folder / name).is_file()]
        if len(present) == len(FILES):
            return folder
        explicit = origin in ("data.dir", f"${ENV_DATA_DIR}")
        if explicit or present:
            missing = sorted(set(FILES.values()) - set(present))
            raise DataError(f"{origin}={folder} is missing {', '.join(missing)}. {FIX_HINT}")
    return None


@functools.lru_cache(maxsize=4)
def _load_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = {key: read_idx(folder / name, key.split("_")[1]) for key, name in FILES.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_file, labels_file = folder / FILES[f"{split}_images"], folder / FILES[f"{split}_labels"]
        if images.shape[1:] != IMAGE_SHAPE:
            raise DataError(f"{images_file}: images must be {IMAGE_SHAPE}. Received: {images.shape[1:]}.")
        if len(images) != len(labels):
            raise DataError(
                f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels. {FIX_HINT}"
            )
        if len(labels) and labels.max() >= len(CLASS_NAMES):
            raise DataError(
                f"{labels_file}: labels must be in 0..{len(CLASS_NAMES) - 1}. Received: {int(labels.max())}."
            )
    return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]


def _download() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    import keras  # imported late: the backend is chosen by the caller first

    log.warning("Fashion-MNIST not found locally; downloading with keras.datasets. %s", FIX_HINT)
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as e:
        raise DataError(f"Fashion-MNIST is not on this machine and could not be downloaded ({e}). {FIX_HINT}") from e
    return x_train, y_train, x_test, y_test


def _head(array: np.ndarray, size: int | None, name: str, why: str = "") -> np.ndarray:
    if size is None:
        return array
    if not 1 <= size <= len(array):
        raise ValueError(f"`data.{name}` must be in 1..{len(array)}{why}. Received: {name}={size}")
    return array[:size]


def holdout_split(total: int, validation_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training examples kept for training (in their original order) and of those held out.

    The held-out ones are the last `validation_size` of one fixed permutation (`VALIDATION_SEED`) of `total`.

    Raises:
        ValueError: unless 1 <= validation_size < total (training needs at least one example).
    """
    if isinstance(validation_size, bool) or not isinstance(validation_size, int) or not 1 <= validation_size < total:
        raise ValueError(
            f"`data.validation_size` must be an integer in 1..{total - 1} (held out of the {total} training "
            f"examples, leaving at least one to train on), or null to validate on the test set. "
            f"Received: validation_size={validation_size!r}"
        )
    return _holdout_split(total, validation_size)


@functools.lru_cache(maxsize=8)
def _holdout_split(total: int, validation_size: int) -> tuple[np.ndarray, np.ndarray]:
    held_out = np.random.default_rng(VALIDATION_SEED).permutation(total)[total - validation_size :]
    keep = np.ones(total, dtype=bool)
    keep[held_out] = False
    train, held_out = np.flatnonzero(keep), held_out.copy()
    train.flags.writeable = held_out.flags.writeable = False  # cached: shared by every caller
    return train, held_out


def load(
    dir: str | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    validation_size: int | None = None,
) -> Dataset:
    """Loads Fashion-MNIST, scaled to [0, 1], with validation data held out of the training set or the test set.

    The files are read from the first of `dir`, `$LRSWEEP_DATA_DIR`, `~/.keras/datasets/fashion-mnist` and
    `/usr/share/datasets/fashion-mnist` that holds them; only if none does, Keras downloads them.
    The dataset read from a folder is cached (read-only arrays), so the jobs of a multirun in one process read
    and scale it once.

    Args:
        dir: a folder holding the four IDX `.gz` files, or None to search.
        train_size: keep the first `train_size` training examples (None: all 60,000, or all left after the
            held-out ones).
        test_size: keep the first `test_size` test examples (None: all 10,000).
        validation_size: validate on this many training examples, held out of training: the last
            `validation_size` of a fixed permutation (`holdout_split`), the same for every run. None: validate on
            the test set (the tutorial's way).
    """
    folder = locate(dir)
    if folder is None:
        return _split(_download(), "keras.datasets download", train_size, test_size, validation_size)
    return _load(folder.resolve(), train_size, test_size, validation_size)


@functools.lru_cache(maxsize=2)
def _load(folder: Path, train_size: int | None, test_size: int | None, validation_size: int | None) -> Dataset:
    """`load` from a folder, once per process for each choice of sizes: the jobs of a multirun share its arrays."""
    dataset = _split(_load_folder(folder), str(folder), train_size, test_size, validation_size)
    for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, dataset.x_val, dataset.y_val):
        array.flags.writeable = False  # cached: shared by every caller
    return dataset


def _split(
    raw: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    source: str,
    train_size: int | None,
    test_size: int | None,
    validation_size: int | None,
) -> Dataset:
    x_train, y_train, x_test, y_test = raw
    if validation_size is None:
        x_val = y_val = None
        validation = VALIDATION_IS_TEST
        x_train, y_train = _head(x_train, train_size, "train_size"), _head(y_train, train_size, "train_size")
    else:
        kept, held_out = holdout_split(len(x_train), validation_size)
        why = f" (the training examples left after data.validation_size={validation_size}; lower either)"
        kept = _head(kept, train_size, "train_size", why)
        x_val, y_val = _scale(x_train[held_out]), y_train[held_out].astype(np.int64)
        x_train, y_train = x_train[kept], y_train[kept]
        validation = f"held-out {validation_size} of train"
    x_test, y_test = _head(x_test, test_size, "test_size"), _head(y_test, test_size, "test_size")
    return Dataset(
        x_train=_scale(x_train),
        y_train=y_train.astype(np.int64),
        x_test=_scale(x_test),
        y_test=y_test.astype(np.int64),
        source=source,
        x_val=x_val,
        y_val=y_val,
        validation=validation,
    )


def _scale(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float32) / np.float32(255)
