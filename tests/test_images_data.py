"""Image sources: sklearn digits, IDX (Fashion-)MNIST directories, .npy/.npz arrays."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from koopman_distill.data.images import (
    FASHION_MNIST_DIR,
    load_images,
    read_idx,
    to_channels,
    to_resolution,
    write_idx,
)
from koopman_distill.errors import KDMError

RNG = np.random.default_rng(0)


def make_idx_dir(root: Path, gz: bool, n_train: int = 12, n_test: int = 5) -> dict:
    """A Fashion-MNIST-shaped directory of IDX files with random 28x28 uint8 images."""
    root.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        data[prefix] = (images, labels)
    return data


def save(path: Path, arr: np.ndarray) -> str:
    np.save(path, arr)
    return str(path)


def raises(match: str):
    return pytest.raises(KDMError, match=match)


# --- digits ----------------------------------------------------------------------------------


def test_digits_load_native():
    from sklearn.datasets import load_digits

    ref = load_digits()
    d = load_images("digits", 8)
    assert d.images.shape == (1797, 1, 8, 8) and d.images.dtype == np.float32
    assert d.images.min() == -1.0 and d.images.max() == 1.0
    assert d.num_classes == 10 and d.labels.dtype == np.int64
    np.testing.assert_array_equal(d.labels, ref.target)
    np.testing.assert_allclose(d.images[:, 0], ref.images / 8.0 - 1.0, atol=1e-6)
    assert "load_digits" in d.source and len(d) == 1797


def test_digits_resize_to_16_keeps_mean():
    d8 = load_images("digits", 8)
    d16 = load_images("digits", 16)
    assert d16.images.shape == (1797, 1, 16, 16)
    assert d16.images.min() >= -1.0 and d16.images.max() <= 1.0
    assert abs(d16.images.mean() - d8.images.mean()) < 0.02
    per_image = np.abs(d16.images.mean(axis=(1, 2, 3)) - d8.images.mean(axis=(1, 2, 3)))
    assert per_image.max() < 0.1
    assert "bilinear" in d16.source


def test_digits_to_rgb():
    d = load_images("digits", 8, channels=3)
    assert d.images.shape == (1797, 3, 8, 8)
    np.testing.assert_array_equal(d.images[:, 0], d.images[:, 2])


# --- IDX format ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a-idx3-ubyte", "a-idx3-ubyte.gz"])
def test_idx_round_trip_uint8(tmp_path, name):
    arr = RNG.integers(0, 256, size=(7, 5, 6), dtype=np.uint8)
    path = write_idx(tmp_path / name, arr)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (7, 5, 6)
    np.testing.assert_array_equal(back, arr)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind


def test_idx_header_is_standard(tmp_path):
    write_idx(tmp_path / "x", np.zeros((2, 3, 4), np.uint8))
    raw = (tmp_path / "x").read_bytes()
    assert raw[:16] == bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4])
    assert len(raw) == 16 + 24


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip_other_dtypes(tmp_path, dtype):
    arr = (RNG.standard_normal((4, 3)) * 50).astype(dtype)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "x", arr)), arr)


def test_idx_int64_stored_as_int32(tmp_path):
    back = read_idx(write_idx(tmp_path / "x", np.arange(5, dtype=np.int64)))
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, np.arange(5))
    with raises("do not fit IDX int32"):
        write_idx(tmp_path / "y", np.array([2**40]))


def test_idx_malformed_files(tmp_path):
    good = tmp_path / "good"
    write_idx(good, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    raw = good.read_bytes()
    cases = {
        "short": (raw[:3], "shorter than the 4-byte header"),
        "magic": (b"\x01" + raw[1:], "does not start with two zero bytes"),
        "code": (raw[:2] + b"\x07" + raw[3:], "unknown dtype code 0x07"),
        "header": (raw[:10], "truncated inside its header"),
        "data": (raw[:-5], "is truncated: shape \\(2, 3, 4\\) needs 24 data bytes, found 19"),
        "trailing": (raw + b"\x00", "longer than its header says"),
        "gzip": (gzip.compress(raw)[:-10], "corrupt or truncated gzip"),
        "zero": (bytes([0, 0, 8, 0]), "declares 0 dimensions"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with raises(message) as info:
            read_idx(path)
        assert str(path) in str(info.value)
    with raises("IDX file not found"):
        read_idx(tmp_path / "missing")


def test_write_idx_rejects_unsupported(tmp_path):
    with raises("IDX cannot store dtype bool"):
        write_idx(tmp_path / "x", np.zeros(3, bool))
    with raises("1 to 255 dimensions"):
        write_idx(tmp_path / "x", np.array(3, np.uint8))


# --- IDX directories -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_directory_both_splits(tmp_path, gz):
    data = make_idx_dir(tmp_path / "fm", gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        d = load_images(f"fashion-mnist:{tmp_path / 'fm'}", 28, split=split)
        images, labels = data[prefix]
        assert d.images.shape == (len(images), 1, 28, 28) and d.num_classes == 10
        np.testing.assert_allclose(d.images[:, 0], images / 127.5 - 1.0, atol=1e-6)
        np.testing.assert_array_equal(d.labels, labels)
        assert f"split={split}" in d.source


def test_mnist_directory_dotted_names(tmp_path):
    images = RNG.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "train-images.idx3-ubyte", images)
    write_idx(tmp_path / "train-labels.idx1-ubyte", np.array([1, 2, 3], np.uint8))
    d = load_images(f"mnist:{tmp_path}", 28)
    np.testing.assert_array_equal(d.labels, [1, 2, 3])


def test_idx_resize_28_to_16_area(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    d28 = load_images(f"fashion-mnist:{tmp_path}", 28)
    d16 = load_images(f"fashion-mnist:{tmp_path}", 16)
    assert d16.images.shape == (12, 1, 16, 16) and "(area)" in d16.source
    # 28/16 is not an integer factor, so overlapping windows shift noise means a little
    np.testing.assert_allclose(d16.images.mean(axis=(1, 2, 3)), d28.images.mean(axis=(1, 2, 3)),
                               atol=0.05)
    assert abs(d16.images.mean() - d28.images.mean()) < 0.01
    flat = to_resolution(np.full((1, 1, 28, 28), 0.25, np.float32), 16)
    np.testing.assert_allclose(flat, 0.25, atol=1e-6)


def test_idx_pad_28_to_32(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    d28 = load_images(f"fashion-mnist:{tmp_path}", 28)
    d32 = load_images(f"fashion-mnist:{tmp_path}", 32)
    assert d32.images.shape == (12, 1, 32, 32) and "(pad)" in d32.source
    np.testing.assert_array_equal(d32.images[:, :, 2:30, 2:30], d28.images)
    border = np.ones((32, 32), bool)
    border[2:30, 2:30] = False
    assert (d32.images[:, :, border] == -1.0).all()


def test_idx_directory_errors(tmp_path):
    with raises("mnist has no default location; pass .* as mnist:DIR"):
        load_images("mnist", 28)
    with raises("fashion-mnist directory not found: .*nowhere"):
        load_images(f"fashion-mnist:{tmp_path / 'nowhere'}", 28)
    with raises("no t10k images file in .*: expected t10k-images-idx3-ubyte or "
                "t10k-images-idx3-ubyte.gz"):
        load_images(f"mnist:{tmp_path}", 28, split="test")
    make_idx_dir(tmp_path, gz=True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    with raises("has 11 labels for 12 images; the counts must match"):
        load_images(f"mnist:{tmp_path}", 28)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.full(12, 10, np.uint8))
    with raises("has label 10; mnist labels are 0..9"):
        load_images(f"mnist:{tmp_path}", 28)


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file()
                    and not os.environ.get("KDM_REQUIRE_REAL_DATA"),
                    reason="Debian dataset-fashion-mnist not installed (CI installs it and "
                    "sets KDM_REQUIRE_REAL_DATA=1, so there it never skips)")
def test_real_fashion_mnist():
    train = load_images("fashion-mnist", 28)
    test = load_images("fashion-mnist", 28, split="test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.num_classes == test.num_classes == 10
    assert set(np.unique(train.labels)) == set(range(10)) == set(np.unique(test.labels))
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert train.images.min() == -1.0 and train.images.max() == 1.0


# --- array files -----------------------------------------------------------------------------


def test_npy_uint8(tmp_path):
    arr = RNG.integers(0, 256, size=(6, 8, 8), dtype=np.uint8)
    d = load_images(save(tmp_path / "a.npy", arr), 8)
    assert d.images.shape == (6, 1, 8, 8) and d.labels is None and d.num_classes == 0
    np.testing.assert_allclose(d.images[:, 0], arr / 127.5 - 1.0, atol=1e-6)


def test_npy_float01_channels_last(tmp_path):
    arr = RNG.random((4, 8, 8, 3)).astype(np.float32)
    d = load_images(save(tmp_path / "a.npy", arr), 8)
    assert d.images.shape == (4, 3, 8, 8)
    np.testing.assert_allclose(d.images, arr.transpose(0, 3, 1, 2) * 2 - 1, atol=1e-6)


def test_npy_signed_channels_first_kept(tmp_path):
    arr = RNG.uniform(-1, 1, (4, 3, 8, 8)).astype(np.float64)
    d = load_images(save(tmp_path / "a.npy", arr), 8)
    np.testing.assert_allclose(d.images, arr, atol=1e-6)
    grey = load_images(str(tmp_path / "a.npy"), 8, channels=1)
    np.testing.assert_allclose(grey.images[:, 0], 0.299 * arr[:, 0] + 0.587 * arr[:, 1]
                               + 0.114 * arr[:, 2], atol=1e-5)


def test_npz_keys_and_labels(tmp_path):
    arr = RNG.integers(0, 256, size=(5, 1, 8, 8), dtype=np.uint8)
    labels = np.array([0, 3, 1, 3, 2])
    np.savez(tmp_path / "a.npz", x=arr, y=labels.astype(np.int32))
    d = load_images(str(tmp_path / "a.npz"), 8)
    assert d.labels.dtype == np.int64 and d.num_classes == 4
    np.testing.assert_array_equal(d.labels, labels)
    np.savez(tmp_path / "b.npz", images=arr, arr_0=np.zeros_like(arr), labels=np.eye(6)[labels])
    d = load_images(str(tmp_path / "b.npz"), 8)  # "images" wins over "arr_0"
    np.testing.assert_allclose(d.images, arr / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(d.labels, labels)
    assert d.num_classes == 6
    np.savez(tmp_path / "c.npz", arr)  # unnamed -> arr_0, no labels
    assert load_images(str(tmp_path / "c.npz"), 8).labels is None


def test_array_file_errors(tmp_path):
    ok = RNG.random((5, 8, 8)).astype(np.float32)
    cases = [
        (np.zeros((5, 64), np.float32), "have 2 dimensions .*expected \\(N, R, R\\)"),
        (np.zeros((5, 5, 8, 8), np.float32), "shape \\(5, 5, 8, 8\\); expected"),
        (np.zeros((5, 8, 6), np.float32), "are 8x6; only square images"),
        (np.zeros((0, 8, 8), np.float32), "are empty"),
        (ok * 255, "float values in \\[.*\\]; accepted: integers 0..255, floats in \\[0, 1\\] "
                   "or \\[-1, 1\\]"),
        (np.full((2, 8, 8), -3, np.int16), "integer values in \\[-3, -3\\]"),
        (np.array(["a", "b"]), "must be numbers"),
    ]
    for i, (arr, message) in enumerate(cases):
        with raises(message):
            load_images(save(tmp_path / f"e{i}.npy", arr), 8)
    bad = ok.copy()
    bad[2, 1, 1] = np.nan
    bad[3, 0, 0] = np.inf
    bad[3, 0, 1] = np.nan
    with raises("have 3 NaN/inf values \\(first in image 2\\)"):
        load_images(save(tmp_path / "nan.npy", bad), 8)


def test_npz_label_errors(tmp_path):
    arr = np.zeros((5, 8, 8), np.uint8)
    np.savez(tmp_path / "n.npz", images=arr, labels=np.arange(4))
    with raises("has 4 labels for 5 images"):
        load_images(str(tmp_path / "n.npz"), 8)
    np.savez(tmp_path / "neg.npz", images=arr, labels=np.array([0, -1, 2, 1, 0]))
    with raises("negative labels \\(first at index 1: -1\\)"):
        load_images(str(tmp_path / "neg.npz"), 8)
    np.savez(tmp_path / "soft.npz", images=arr, labels=np.full((5, 2), 0.5))
    with raises("not one-hot"):
        load_images(str(tmp_path / "soft.npz"), 8)
    np.savez(tmp_path / "frac.npz", images=arr, labels=np.full(5, 0.5))
    with raises("must be integers"):
        load_images(str(tmp_path / "frac.npz"), 8)
    np.savez(tmp_path / "none.npz", pics=arr)
    with raises("has no images: expected one of the keys images, x, arr_0, found pics"):
        load_images(str(tmp_path / "none.npz"), 8)


def test_source_and_argument_errors(tmp_path):
    with raises("image file not found: .*missing.npy"):
        load_images(str(tmp_path / "missing.npy"), 8)
    with raises("unknown image source 'cifar10'; accepted forms: digits, fashion-mnist, "
                "fashion-mnist:DIR, mnist:DIR, PATH.npy, PATH.npz"):
        load_images("cifar10", 8)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with raises("cannot read .*junk.npy as a NumPy array file"):
        load_images(str(tmp_path / "junk.npy"), 8)
    with raises("split must be 'train' or 'test'"):
        load_images("digits", 8, split="val")
    with raises("channels must be 1, 3 or None"):
        load_images("digits", 8, channels=2)
    with raises("resolution must be a positive integer"):
        load_images("digits", 0)


# --- resolution and channels -----------------------------------------------------------------


def test_to_resolution_rules():
    x = RNG.uniform(-1, 1, (2, 1, 8, 8)).astype(np.float32)
    assert to_resolution(x, 8) is x
    assert to_resolution(x, 10).shape == (2, 1, 10, 10)  # pad by 1 each side
    assert (to_resolution(x, 10)[:, :, 0] == -1).all()
    up = to_resolution(x, 16)  # growth of 8 > 8 // 4 -> bilinear
    bilinear = torch.nn.functional.interpolate(torch.from_numpy(x), size=(16, 16),
                                               mode="bilinear", align_corners=False)
    np.testing.assert_allclose(up, bilinear.numpy(), atol=1e-6)
    down = to_resolution(x, 4)  # area: exact 2x2 block means
    np.testing.assert_allclose(down, x.reshape(2, 1, 4, 2, 4, 2).mean(axis=(3, 5)), atol=1e-6)
    with raises("only square images"):
        to_resolution(np.zeros((1, 1, 8, 6), np.float32), 4)


def test_to_channels():
    red = np.stack([np.ones((2, 2)), -np.ones((2, 2)), -np.ones((2, 2))])[None]
    grey = to_channels(red.astype(np.float32), 1)
    np.testing.assert_allclose(grey, 0.299 - 0.587 - 0.114, atol=1e-6)
    assert to_channels(grey, 3).shape == (1, 3, 2, 2)
