"""Tests for autoall.data: loaders on tiny files in the real formats, splits, batches, crops."""

from __future__ import annotations

import pickle
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from autoall.training._batches import augment_batch, iterate_batches
from autoall.training._data import DATASETS, DataNotFoundError, DeviceData, load_data

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


# ---------------------------------------------------------------- writers of the real formats


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (LeCun) file: magic 0x0000 08 <ndim>, big-endian int32 dims, then the uint8 data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % 10).astype(np.uint8)


def _make_mnist(
    root: Path, folder: str, *, n_train: int = 50, n_test: int = 20
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": _labels(n_train, rng),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": _labels(n_test, rng),
    }
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for name, array in arrays.items():
        _write_idx(raw / name, array)
    return arrays


def _make_cifar(root: Path, *, per_batch: int = 10, n_test: int = 20) -> dict[str, dict]:
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in CIFAR_FILES:
        n = n_test if name == "test_batch" else per_batch
        batches[name] = {
            "batch_label": name,
            "labels": [int(v) for v in _labels(n, rng)],
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batches[name], protocol=2))
    meta = {
        "label_names": [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
    }
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


# ---------------------------------------------------------------- split checks


def _rows(x: torch.Tensor) -> Counter:
    return Counter(row.tobytes() for row in x.reshape(len(x), -1).numpy())


def _assert_stratified(part: torch.Tensor, whole: torch.Tensor, fraction: float) -> None:
    """Each class's count in ``part`` is within one of ``fraction`` times its count in ``whole``."""
    for c in range(10):
        expected = fraction * int((whole == c).sum())
        assert abs(int((part == c).sum()) - expected) <= 1, (c, int((part == c).sum()), expected)


def _assert_normalized(data: DeviceData) -> None:
    z = data.normalize(data.train_x)
    assert z.dtype == torch.float32
    for c in range(data.in_shape[0]):
        assert abs(z[:, c].mean().item()) < 1e-4
        assert abs(z[:, c].std(unbiased=False).item() - 1) < 1e-4


# ---------------------------------------------------------------- digits


def test_digits_shapes_splits_and_stats() -> None:
    from sklearn.datasets import load_digits

    data = load_data("digits", val_fraction=0.1, split_seed=0)
    assert (data.name, data.in_shape, data.num_classes, data.augment) == (
        "digits",
        (1, 8, 8),
        10,
        False,
    )
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert tuple(data.train_x.shape[1:]) == (1, 8, 8) and int(data.train_x.max()) == 16
    assert (
        sum(data.sizes.values()) == 1797
        and data.sizes["test"] == 360
        and data.n_train == data.sizes["train"]
    )
    # the splits partition the 1,797 images exactly (as a multiset: digits has duplicate images)
    everything = torch.from_numpy(load_digits().images.astype(np.uint8))
    assert _rows(data.train_x) + _rows(data.val_x) + _rows(data.test_x) == _rows(everything)
    all_y = torch.cat([data.train_y, data.val_y, data.test_y])
    _assert_stratified(data.test_y, all_y, 0.2)
    _assert_stratified(data.val_y, torch.cat([data.train_y, data.val_y]), 0.1)
    _assert_normalized(data)


def test_digits_split_seed_reproducible() -> None:
    a, b = load_data("digits", split_seed=3), load_data("digits", split_seed=3)
    c = load_data("digits", split_seed=4)
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.val_x, c.val_x)
    # the test split is fixed like an official test set: split_seed only moves validation
    assert torch.equal(a.test_x, c.test_x) and torch.equal(a.test_y, c.test_y)


# ---------------------------------------------------------------- mnist / fashion-mnist / cifar10


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_mnist_like_from_idx_files(tmp_path: Path, name: str, folder: str) -> None:
    arrays = _make_mnist(tmp_path, folder)
    data = load_data(name, root=tmp_path, val_fraction=0.2, split_seed=1)
    assert (data.in_shape, data.num_classes, data.augment) == ((1, 28, 28), 10, False)
    assert data.sizes == {"train": 40, "val": 10, "test": 20}
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    # test split = the files' test set, in order; train + val = the files' train set
    assert torch.equal(data.test_x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert torch.equal(data.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    file_train = torch.from_numpy(arrays["train-images-idx3-ubyte"])
    assert _rows(data.train_x) + _rows(data.val_x) == _rows(file_train)
    _assert_stratified(data.val_y, torch.from_numpy(arrays["train-labels-idx1-ubyte"]).long(), 0.2)
    _assert_normalized(data)
    other = load_data(name, root=str(tmp_path), val_fraction=0.2, split_seed=2)
    assert not torch.equal(data.val_x, other.val_x)


def test_cifar10_from_pickle_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _make_cifar(tmp_path)
    data = load_data("cifar10", root=tmp_path, val_fraction=0.2, split_seed=0)
    assert (data.in_shape, data.num_classes, data.augment) == ((3, 32, 32), 10, True)
    assert data.sizes == {"train": 40, "val": 10, "test": 20}
    test = batches["test_batch"]
    assert torch.equal(data.test_y, torch.tensor(test["labels"]))
    # a row is the R, G and B planes of 32x32 pixels
    assert torch.equal(
        data.test_x[3, 1], torch.from_numpy(test["data"][3, 1024:2048].reshape(32, 32))
    )
    train_rows = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)])
    assert _rows(data.train_x) + _rows(data.val_x) == _rows(torch.from_numpy(train_rows))
    all_labels = torch.tensor(sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), []))
    _assert_stratified(data.val_y, all_labels, 0.2)
    _assert_normalized(data)
    # same images as torchvision's reader (its md5 check off: these are not the official files)
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    reference = tv_cifar.CIFAR10(str(tmp_path), train=False)
    assert torch.equal(data.test_x, torch.from_numpy(reference.data).permute(0, 3, 1, 2))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "files"),
    [
        ("mnist", [f"MNIST/raw/{f}" for f in MNIST_FILES]),
        ("fashion-mnist", [f"FashionMNIST/raw/{f}" for f in MNIST_FILES]),
        ("cifar10", [f"cifar-10-batches-py/{f}" for f in CIFAR_FILES]),
    ],
)
def test_missing_files_name_root_and_files(tmp_path: Path, name: str, files: list[str]) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_data(name, root=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(tmp_path) in message and "download=True" in message and "\n" not in message
    assert all(f in message for f in files), message
    assert not any(tmp_path.iterdir())  # download off: nothing written


def test_partly_missing_mnist_is_not_found(tmp_path: Path) -> None:
    _make_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_data("mnist", root=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_failed_download_is_data_not_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    calls = []

    def offline(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # what torchvision's downloader calls
    with pytest.raises(DataNotFoundError) as info:
        load_data(name, root=tmp_path, download=True)
    assert calls, "the download was never attempted"
    message = str(info.value)
    assert (
        "Download failed" in message and "name resolution" in message and str(tmp_path) in message
    )
    assert ("train-images-idx3-ubyte" if name == "mnist" else "data_batch_1") in message
    # one error, no chained urllib traceback
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_corrupted_files_say_so(tmp_path: Path) -> None:
    _make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3 is not a readable CIFAR-10 python batch"):
        load_data("cifar10", root=tmp_path)
    _make_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\xff" * 20)
    with pytest.raises(ValueError, match="look corrupted"):
        load_data("mnist", root=tmp_path)


def test_labels_out_of_range(tmp_path: Path) -> None:
    arrays = _make_mnist(tmp_path, "MNIST")
    labels = arrays["t10k-labels-idx1-ubyte"].copy()
    labels[0] = 12
    _write_idx(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(ValueError, match=r"mnist labels must lie in 0\.\.9, .* hold 0\.\.12\."):
        load_data("mnist", root=tmp_path, val_fraction=0.2)


def test_bad_arguments() -> None:
    with pytest.raises(
        ValueError,
        match=r"^Unknown data set 'svhn'; expected one of digits, mnist, fashion-mnist, cifar10\.$",
    ):
        load_data("svhn")
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10")
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"val_fraction must be in \(0, 1\), but got {bad}\."):
            load_data("digits", val_fraction=bad)
    for bad in (True, "0.1", None):
        with pytest.raises(ValueError, match=r"val_fraction must be a number in \(0, 1\)"):
            load_data("digits", val_fraction=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 10 .one per class"):
        load_data("digits", val_fraction=0.001)
    with pytest.raises(ValueError, match="split_seed must be a non-negative integer, but got -1"):
        load_data("digits", split_seed=-1)


# ---------------------------------------------------------------- DeviceData


def test_device_data_to_and_split() -> None:
    data = load_data("digits")
    assert data.device == torch.device("cpu")
    x, y = data.split("test")
    assert x is data.test_x and y is data.test_y
    moved = data.to("meta")  # a real move without a GPU
    assert moved.device == torch.device("meta") and data.device == torch.device("cpu")
    assert all(
        t.device.type == "meta" for t in (*moved.split("train"), moved.val_x, moved.mean, moved.std)
    )
    assert moved.sizes == data.sizes and moved.train_x.dtype == torch.uint8
    with pytest.raises(ValueError, match="split must be one of train, val, test, but got 'valid'"):
        data.split("valid")


# ---------------------------------------------------------------- batches


def _epoch(n: int, **kwargs: object) -> list[torch.Tensor]:
    x = torch.arange(n)
    batches = list(iterate_batches(x, x * 10, **kwargs))  # type: ignore[arg-type]
    assert all(torch.equal(by, bx * 10) for bx, by in batches)  # x and y stay paired
    return [bx for bx, _ in batches]


def test_iterate_batches_covers_each_index_once() -> None:
    batches = _epoch(103, batch_size=10, generator=torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    assert torch.equal(torch.cat(batches).sort().values, torch.arange(103))
    assert not torch.equal(torch.cat(batches), torch.arange(103))
    assert torch.equal(torch.cat(_epoch(103, batch_size=10, shuffle=False)), torch.arange(103))


def test_iterate_batches_seeded_and_drop_last() -> None:
    def order(seed: int, **kwargs: object) -> torch.Tensor:
        return torch.cat(
            _epoch(103, batch_size=10, generator=torch.Generator().manual_seed(seed), **kwargs)
        )

    assert torch.equal(order(5), order(5)) and not torch.equal(order(5), order(6))
    dropped = _epoch(103, batch_size=10, drop_last=True, generator=torch.Generator().manual_seed(5))
    assert [len(b) for b in dropped] == [10] * 10 and len(torch.cat(dropped).unique()) == 100
    assert torch.equal(torch.cat(dropped), order(5)[:100])
    images = torch.zeros(7, 1, 8, 8, dtype=torch.uint8)
    assert [tuple(b.shape) for b, _ in iterate_batches(images, torch.zeros(7), batch_size=4)] == [
        (4, 1, 8, 8),
        (3, 1, 8, 8),
    ]


def test_iterate_batches_bad_arguments_fail_at_call() -> None:
    x = torch.zeros(5)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, but got 0"):
        iterate_batches(x, x, batch_size=0)
    with pytest.raises(ValueError, match="same number of samples, but got 5 and 4"):
        iterate_batches(x, x[:4], batch_size=2)


# ---------------------------------------------------------------- augmentation


def _find_crop(out: torch.Tensor, padded: torch.Tensor, pad: int) -> tuple[int, int, bool] | None:
    h, w = out.shape[-2:]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            for flip in (False, True):
                if torch.equal(out, crop.flip(-1) if flip else crop):
                    return dy, dx, flip
    return None


def test_augment_batch_is_a_padded_crop_or_its_flip() -> None:
    x = torch.arange(1, 1 + 64 * 2 * 5 * 6, dtype=torch.float32).view(
        64, 2, 5, 6
    )  # all values distinct
    out = augment_batch(x, generator=torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    found = [_find_crop(out[i], padded[i], 2) for i in range(len(x))]
    assert None not in found
    assert len(set(found)) > 10 and {f[2] for f in found} == {
        False,
        True,
    }  # really random per sample


def test_augment_batch_pad_zero_dtype_and_determinism() -> None:
    x = torch.randint(0, 256, (32, 3, 4, 4), dtype=torch.uint8)
    out = augment_batch(x, generator=torch.Generator().manual_seed(1), pad=0)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    flipped = [not torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    pairs = zip(out, x, flipped, strict=True)
    assert all(torch.equal(o, i.flip(-1) if f else i) for o, i, f in pairs) and any(flipped)
    a = augment_batch(x, generator=torch.Generator().manual_seed(7))
    b = augment_batch(x, generator=torch.Generator().manual_seed(7))
    c = augment_batch(x, generator=torch.Generator().manual_seed(8))
    assert a.dtype == torch.uint8 and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(
        ValueError, match=r"expects images \(B, C, H, W\), but got shape \(3, 4, 4\)"
    ):
        augment_batch(x[0])
    with pytest.raises(ValueError, match="pad must be a non-negative integer, but got -1"):
        augment_batch(x, pad=-1)


def test_generator_on_another_device_than_the_data() -> None:
    """A CPU generator drives data on another device (meta stands in for a GPU here)."""
    x = torch.zeros(10, 3, 8, 8, dtype=torch.uint8, device="meta")
    y = torch.zeros(10, dtype=torch.int64, device="meta")
    generator = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(x, y, batch_size=4, generator=generator))
    assert [(bx.device.type, len(bx), by.device.type) for bx, by in batches] == [
        ("meta", 4, "meta"),
        ("meta", 4, "meta"),
        ("meta", 2, "meta"),
    ]
    out = augment_batch(x, generator=generator)
    assert (out.device.type, out.shape, out.dtype) == ("meta", x.shape, torch.uint8)
