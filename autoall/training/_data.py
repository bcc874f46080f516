"""Data sets as device-resident tensors: loading, stratified splits, batches, augmentation.

Every data set becomes one :class:`DeviceData`: uint8 images ``(N, C, H, W)`` and int64
labels ``(N,)`` for the train, validation and test splits, all on the training device,
with per-channel mean/std from the train split. Batches are index slices of one
``randperm`` on that device and CIFAR augmentation runs there too,
so no ``DataLoader`` sits on the hot path.

Sources: ``digits`` is scikit-learn's bundled 8x8 digits (offline); ``mnist`` and
``fashion-mnist`` are read by torchvision from ``<root>/MNIST/raw`` and
``<root>/FashionMNIST/raw``; ``cifar10`` is read from the python pickle batches in
``<root>/cifar-10-batches-py``. torchvision md5-checks every CIFAR batch against the
official files, so this module reads the batches itself (checking their structure
instead) and uses torchvision only to download and md5-check the archive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import logging
import math
import os
import pickle
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from autoall.errors import InvalidValue, UserError

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "cifar10")
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_ROOT = Path("data")  # data root when none is given (relative to the working directory)

_NUM_CLASSES = 10  # all four data sets have ten classes
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0  # fixed, like an official test set: split_seed only moves validation
_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = ("test_batch",)
log = logging.getLogger("autoall.data")


class DataNotFoundError(UserError, ValueError):
    """A data set's files are missing under the data root (and could not be downloaded)."""


@dataclass
class DeviceData:
    """Three disjoint splits of one data set, held as tensors on ``device``.

    ``*_x`` are uint8 ``(N, C, H, W)`` in the data set's own units (0..255, digits 0..16);
    ``*_y`` are int64 ``(N,)``. ``mean`` and ``std`` are float32 ``(1, C, 1, 1)``, computed
    on the train split only. ``augment`` asks the trainer to apply :func:`augment_batch`.
    """

    name: str
    in_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: Tensor
    std: Tensor
    augment: bool  # random crop (pad 4) + horizontal flip on train batches
    device: torch.device

    def to(self, device: str | torch.device) -> DeviceData:
        """Return a copy with every tensor on ``device`` (no copy where already there)."""
        device = torch.device(device)
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self)
            if isinstance(getattr(self, f.name), Tensor)
        }
        return dataclasses.replace(self, device=device, **moved)

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` as float32, per channel; ``x`` is ``(B, C, H, W)``."""
        return (x.float() - self.mean) / self.std

    def split(self, which: str) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of the ``"train"``, ``"val"`` or ``"test"`` split."""
        if which not in SPLITS:
            raise InvalidValue(f"split must be one of {', '.join(SPLITS)}, but got {which!r}.")
        return getattr(self, f"{which}_x"), getattr(self, f"{which}_y")

    @property
    def sizes(self) -> dict[str, int]:
        """Number of images per split, e.g. ``{"train": 1293, "val": 144, "test": 360}``."""
        return {s: int(self.split(s)[1].shape[0]) for s in SPLITS}

    @property
    def n_train(self) -> int:
        return int(self.train_y.shape[0])


def load_data(
    name: str,
    *,
    root: str | Path | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    device: str | torch.device = "cpu",
    download: bool = False,
) -> DeviceData:
    """Load data set ``name`` into train/val/test tensors on ``device``.

    Validation is a stratified ``val_fraction`` of the training set, drawn with
    ``split_seed``; the test split is the official test set (digits: a stratified,
    fixed 20 % of all 1,797 images). ``root`` (default ``./data``) is unused for digits.
    ``download=True`` fetches missing files with torchvision.

    Raises:
        ValueError: unknown ``name``, ``val_fraction`` outside (0, 1), bad ``split_seed``.
        DataNotFoundError: the files are missing under ``root`` (or the download failed).
    """
    if name not in DATASETS:
        raise InvalidValue(f"Unknown data set {name!r}; expected one of {', '.join(DATASETS)}.")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)):
        raise InvalidValue(f"val_fraction must be a number in (0, 1), but got {val_fraction!r}.")
    if not 0 < val_fraction < 1:
        raise InvalidValue(f"val_fraction must be in (0, 1), but got {val_fraction!r}.")
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise InvalidValue(f"split_seed must be a non-negative integer, but got {split_seed!r}.")
    root = Path(root).expanduser() if root is not None else DEFAULT_ROOT

    if name == "digits":
        x, y = _digits_tensors()
        rest, test = _stratified_split(
            y.numpy(), fraction=_DIGITS_TEST_FRACTION, seed=_DIGITS_TEST_SEED
        )
        full_x, full_y, test_x, test_y = x[rest], y[rest], x[test], y[test]
    elif name == "cifar10":
        full_x, full_y, test_x, test_y = _load_cifar10(root, download=download)
    else:
        full_x, full_y, test_x, test_y = _load_mnist_like(name, root, download=download)

    for y in (full_y, test_y):
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= _NUM_CLASSES):
            raise InvalidValue(
                f"{name} labels must lie in 0..{_NUM_CLASSES - 1}, but the files under '{root}' "
                f"hold {int(y.min())}..{int(y.max())}."
            )
    train, val = _stratified_split(full_y.numpy(), fraction=val_fraction, seed=split_seed)
    train_x = full_x[train]
    mean, std = _channel_stats(train_x)
    data = DeviceData(
        name=name,
        in_shape=(int(full_x.shape[1]), int(full_x.shape[2]), int(full_x.shape[3])),
        num_classes=_NUM_CLASSES,
        train_x=train_x,
        train_y=full_y[train],
        val_x=full_x[val],
        val_y=full_y[val],
        test_x=test_x,
        test_y=test_y,
        mean=mean,
        std=std,
        augment=name == "cifar10",
        device=torch.device("cpu"),
    )
    return data.to(device)


def without_test(data: DeviceData) -> DeviceData:
    """`data` with an empty test split (same dtype and shape per example): what a study trial or
    a report's selection run is given, so nothing chosen on validation can see the test set."""
    return dataclasses.replace(data, test_x=data.test_x[:0], test_y=data.test_y[:0])


def train_subset(data: DeviceData, fraction: float, *, seed: int) -> DeviceData:
    """``data`` with its train split cut to a stratified ``fraction``, drawn with ``seed``.

    Validation and test stay whole; mean and std are recomputed on the kept training images
    (the model sees nothing else of the train split). ``fraction == 1`` returns ``data``.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise InvalidValue(f"fraction must be a number in (0, 1], but got {fraction!r}.")
    if not 0 < fraction <= 1:
        raise InvalidValue(f"fraction must be in (0, 1], but got {fraction!r}.")
    if fraction == 1:
        return data
    _, kept = _stratified_split(data.train_y.cpu().numpy(), fraction=fraction, seed=seed)
    kept = kept.to(data.train_y.device)
    train_x = data.train_x[kept]
    mean, std = _channel_stats(train_x.cpu())
    return dataclasses.replace(
        data,
        train_x=train_x,
        train_y=data.train_y[kept],
        mean=mean.to(data.device),
        std=std.to(data.device),
    )


def _stratified_split(labels: np.ndarray, *, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Sorted ``(keep, held_out)`` indices; ``held_out`` is a stratified ``fraction``.

    scikit-learn's ``train_test_split``, cached under `cache_dir()` by the labels, fraction and
    seed (later studies skip importing scikit-learn, ~1 s); a cached split is used only if it
    splits ``0..n-1`` as asked and its digest matches, else rebuilt with one warning line.
    """
    n, n_classes = len(labels), len(np.unique(labels))
    n_held = math.ceil(fraction * n)
    if n_held < n_classes or n - n_held < n_classes:
        raise InvalidValue(
            f"val_fraction={fraction} splits {n} images into {n - n_held} and {n_held}, but a "
            f"stratified split needs at least {n_classes} (one per class) on each side."
        )
    source = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    source.update(f"{fraction!r}/{seed}".encode())
    path = cache_dir() / "splits" / f"{source.hexdigest()[:32]}.npz"
    try:
        with np.load(path, allow_pickle=False) as cached:
            keep, held, digest = cached["keep"], cached["held"], str(cached["digest"])
        if _is_split(keep, held, n, n_held) and digest == _split_digest(source, keep, held):
            return torch.from_numpy(keep), torch.from_numpy(held)
        log.warning("split cache %s does not match the labels it was made from; rebuilt.", path)
    except FileNotFoundError:
        pass  # not cached yet: compute it
    except Exception:  # truncated, not an npz (BadZipFile), no digest (older autoall)
        log.warning("split cache %s is unreadable or unverifiable; rebuilt.", path)
    from sklearn.model_selection import train_test_split

    keep, held = train_test_split(
        np.arange(n), test_size=fraction, stratify=labels, random_state=seed
    )
    keep, held = np.sort(keep), np.sort(held)
    with contextlib.suppress(OSError):  # a read-only cache: compute it every time
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
        try:  # a new file (never a planted link) that replaces the old whole
            with os.fdopen(fd, "wb") as f:
                np.savez(f, keep=keep, held=held, digest=_split_digest(source, keep, held))
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return torch.from_numpy(keep), torch.from_numpy(held)


def _is_split(keep: np.ndarray, held: np.ndarray, n: int, n_held: int) -> bool:
    """Whether ``keep`` and ``held`` are ascending int64 indices that split ``0..n-1``."""
    for part in (keep, held):
        shaped = part.dtype == np.int64 and part.ndim == 1 and len(part) > 0
        if not (shaped and part[0] >= 0 and part[-1] < n and np.all(np.diff(part) > 0)):
            return False
    sizes = len(held) == n_held and len(keep) + n_held == n  # and disjoint: a split of 0..n-1
    return sizes and not bool(np.isin(held, keep).any())


def _split_digest(source: hashlib._Hash, keep: np.ndarray, held: np.ndarray) -> str:
    indices = np.concatenate([keep, held]).astype("<i8").tobytes()  # held: the last n_held
    return hashlib.sha256(source.digest() + indices).hexdigest()  # source: labels, fraction, seed


def cache_dir() -> Path:
    """$AUTOALL_CACHE, else $XDG_CACHE_HOME/autoall, else ~/.cache/autoall."""
    if os.environ.get("AUTOALL_CACHE"):
        return Path(os.environ["AUTOALL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "autoall"


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Exact per-channel mean/std of uint8 images from a 256-bin histogram (no float copy)."""
    values = torch.arange(256, dtype=torch.float64)
    mean, std = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).double()
        mu = (counts * values).sum() / counts.sum()
        mean.append(mu)
        std.append(((counts * (values - mu) ** 2).sum() / counts.sum()).sqrt())
    shape = (1, x.shape[1], 1, 1)
    std_t = torch.stack(std).float().clamp_min(1e-6)  # a constant channel must not divide by 0
    return torch.stack(mean).float().view(shape), std_t.view(shape)


@functools.lru_cache(maxsize=1)
def _digits_tensors() -> tuple[Tensor, Tensor]:
    """All 1,797 digits, uint8 (N, 1, 8, 8) with values 0..16; cached, callers only index it.

    Read from scikit-learn's bundled ``digits.csv.gz`` (what ``load_digits`` reads) without
    importing scikit-learn (~1 s); ``load_digits`` if the file is not where it used to be.
    """
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = list(spec.submodule_search_locations or []) if spec else []
    csv = [Path(f) / "datasets" / "data" / "digits.csv.gz" for f in folders]
    if csv and csv[0].is_file():
        table = np.loadtxt(csv[0], delimiter=",", dtype=np.float64)
        images, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, target = digits.images, digits.target
    return (
        torch.from_numpy(images.astype(np.uint8)[:, None].copy()),
        torch.from_numpy(target.astype(np.int64)),
    )


def _load_mnist_like(
    name: str, root: Path, *, download: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from torchvision import datasets

    cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
    folder = root / cls.__name__ / "raw"
    _require_files(
        name,
        root,
        [folder / f for f in _MNIST_FILES],
        fetch=(lambda: cls(str(root), train=True, download=True)) if download else None,
        how=f"or copy the four uncompressed IDX files (gunzip the official .gz) into {folder}",
    )
    try:
        train, test = cls(str(root), train=True), cls(str(root), train=False)
    except (AssertionError, ValueError, TypeError, RuntimeError) as err:
        raise InvalidValue(
            f"Could not read {name} from {folder} ({type(err).__name__}: {err}); "
            "the IDX files look corrupted: delete them and download again."
        ) from err
    return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets


def _load_cifar10(root: Path, *, download: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from torchvision.datasets import CIFAR10
    from torchvision.datasets import utils as tv_utils

    def fetch() -> None:  # the archive's md5 is checked; it holds the official batches
        tv_utils.download_and_extract_archive(
            CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5
        )

    folder = root / _CIFAR_FOLDER
    _require_files(
        "cifar10",
        root,
        [folder / f for f in (*_CIFAR_TRAIN, *_CIFAR_TEST)],
        fetch=fetch if download else None,
        how=f"or extract {CIFAR10.filename} from {CIFAR10.url} into {root}",
    )
    return (*_read_cifar_batches(folder, _CIFAR_TRAIN), *_read_cifar_batches(folder, _CIFAR_TEST))


def _read_cifar_batches(folder: Path, names: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Concatenate CIFAR-10 python batches: dict with ``data`` uint8 (N, 3072) and ``labels``."""
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            data, targets = np.asarray(entry["data"]), np.asarray(entry["labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as err:
            raise InvalidValue(
                f"{path} is not a readable CIFAR-10 python batch ({type(err).__name__}: {err})."
            ) from err
        if (
            data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3 * 32 * 32
            or len(targets) != len(data)
        ):
            raise InvalidValue(
                f"{path} is not a CIFAR-10 batch: expected uint8 data (N, 3072) and N labels, "
                f"but got {data.dtype} data {data.shape} and {len(targets)} labels."
            )
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R, G, B planes: already NCHW
        labels.append(targets)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _require_files(
    name: str, root: Path, files: list[Path], *, fetch: Callable[[], object] | None, how: str
) -> None:
    """Return once all ``files`` exist (after ``fetch()`` if given), else DataNotFoundError."""
    if all(f.is_file() for f in files):
        return
    failure = ""
    if fetch is not None:
        try:
            fetch()
        except (RuntimeError, OSError) as err:  # urllib's URLError is an OSError
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            failure = f" Download failed: {lines[-1] if lines else type(err).__name__}."
        if all(f.is_file() for f in files):
            return
    expected = ", ".join(str(f.relative_to(root)) for f in files)
    raise DataNotFoundError(
        f"Data set {name!r} not found under data root '{root}': expected {expected}.{failure} "
        "To get them, load with download=True (CLI: --download) on a machine with internet "
        f"access, {how}."
    )
