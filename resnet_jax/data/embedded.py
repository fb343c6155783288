"""The embedded dataset: scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes).

No download. A fixed held-out split (every fifth example of a fixed permutation: 1,437 train, 360
test). Images are scaled from 0..16 to [0, 1] and standardised by the train mean and std (one
channel); training augmentation shifts each image by up to `max_shift` pixels (zero padding). On the
devices (digits_device_pipeline) the same, from the 0..16 pixels held as uint8.
"""

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from resnet_jax.data.base import ArrayPipeline, HostSlice
from resnet_jax.data.on_device import Augmentation, DevicePipeline, Split

NUM_CLASSES = 10
LEVELS = 16  # pixel values are 0..16


def _digits_file() -> Path:
    """scikit-learn's bundled datasets/data/digits.csv.gz, the file sklearn.datasets.load_digits
    reads, found without importing scikit-learn: that import (SciPy with it) costs 1.4 s of CPU,
    in every process that trains on the digits. tests/test_data_config.py checks that the arrays
    read here equal load_digits()'s."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("scikit-learn is not installed: it ships the digits dataset")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"


def load_digits_pixels() -> tuple[Split, Split]:
    """(train, test); images uint8 [N, 8, 8, 1] with values 0..LEVELS."""
    with gzip.open(_digits_file(), "rt") as f:
        rows = np.loadtxt(f, delimiter=",")  # per example: 64 pixels, then the label
    images = rows[:, :-1].astype(np.uint8).reshape(-1, 8, 8, 1)
    labels = rows[:, -1].astype(np.int32)
    order = np.random.RandomState(0).permutation(len(labels))
    test = order[::5]
    train = np.setdiff1d(order, test)
    return Split(images[train], labels[train]), Split(images[test], labels[test])


def load_digits_split() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train images, labels), (test images, labels)); images float32 [N, 8, 8, 1] in [0, 1]."""
    return tuple((s.images.astype(np.float32) / LEVELS, s.labels) for s in load_digits_pixels())


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
    """Translate each image of [N, H, W, C] by up to `max_shift` pixels, filling with zeros."""
    if max_shift == 0:
        return images
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    dy, dx = rng.integers(0, 2 * max_shift + 1, size=(2, n))
    return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def digits_pipeline(data_config, hosts: HostSlice, seed: int) -> ArrayPipeline:
    """The digits pipeline; `data_config.max_shift` sets the train augmentation."""
    (train_x, train_y), (test_x, test_y) = load_digits_split()
    mean, std = train_x.mean(), train_x.std()
    shift = int(data_config.get("max_shift", 1))

    def augment(images, rng):
        return random_shift(images, rng, shift)

    return ArrayPipeline(((train_x - mean) / std, train_y), ((test_x - mean) / std, test_y),
                         NUM_CLASSES, hosts, seed, augment=augment)


def digits_device_pipeline(data_config, hosts: HostSlice, seed: int) -> DevicePipeline:
    """The digits held on the devices as their 0..16 pixels, normalised and shifted as
    digits_pipeline does (no flip: a mirrored digit is another symbol)."""
    train, test = load_digits_pixels()
    pixels = train.images.astype(np.float64)
    return DevicePipeline(train, test, NUM_CLASSES, pixels.mean(), pixels.std(),
                          Augmentation(pad=int(data_config.get("max_shift", 1))), hosts, seed)
