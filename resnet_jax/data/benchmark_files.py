"""Fixture files of the input-pipeline benchmark (resnet_jax.data.benchmark) and of the tests, not
part of the input pipeline: synthetic JPEGs in a folder tree, and the same images stored as a
prepared TFDS dataset (what `tfds.builder(name, data_dir=...)` then finds, with no download)."""

import io
import os
from typing import Optional

import numpy as np
from PIL import Image

from resnet_jax.data.sources import scan_folder

# ImageNet's typical JPEG: about 500 x 375 pixels and 110 KB; smooth content plus this much noise at
# this quality gives that size.
IMAGENET_LIKE_SHAPE = (375, 500)
NOISE_STD = 25.0
JPEG_QUALITY = 90


def synthetic_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """uint8 [height, width, 3]: random smooth waves plus Gaussian noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    freq = rng.uniform(0.01, 0.1, size=(3, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(3, 2))
    waves = np.stack([np.sin(x * fx + px) * np.cos(y * fy + py)
                      for (fx, fy), (px, py) in zip(freq, phase)], axis=-1)
    image = 128 + 100 * waves + rng.normal(0, NOISE_STD, waves.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def random_jpeg(rng: np.random.Generator, height_range: tuple[int, int],
                width_range: tuple[int, int]) -> bytes:
    """A synthetic_image of a size drawn from the inclusive ranges, JPEG-encoded."""
    height = int(rng.integers(height_range[0], height_range[1] + 1))
    width = int(rng.integers(width_range[0], width_range[1] + 1))
    buffer = io.BytesIO()
    image = Image.fromarray(synthetic_image(rng, height, width))
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def write_image_folder(root: str, split_sizes: dict[str, int], num_classes: int,
                       height_range: tuple[int, int] = IMAGENET_LIKE_SHAPE[:1] * 2,
                       width_range: tuple[int, int] = IMAGENET_LIKE_SHAPE[1:] * 2,
                       seed: int = 0, unique_images: Optional[int] = None) -> str:
    """Write <root>/<split>/class_<k>/<i>.jpg (label i % num_classes) and return root; with
    `unique_images`, only that many different images are drawn and the files cycle through them (same
    bytes, same decoding cost, faster to write)."""
    rng = np.random.default_rng(seed)
    drawn: list[bytes] = []
    for split, size in split_sizes.items():
        for i in range(size):
            if unique_images is None or len(drawn) < unique_images:
                drawn.append(random_jpeg(rng, height_range, width_range))
            label_dir = os.path.join(root, split, f"class_{i % num_classes:03d}")
            os.makedirs(label_dir, exist_ok=True)
            with open(os.path.join(label_dir, f"{i:06d}.jpg"), "wb") as f:
                f.write(drawn[len(drawn) - 1 if unique_images is None else i % len(drawn)])
    return root


def store_folder_as_tfds(folder: str, name: str, data_dir: str):
    """Store the images of `folder` (<split>/<class>/<image>) as the prepared TFDS dataset `name`
    (version 1.0.0) in data_dir; returns its builder."""
    import tensorflow_datasets as tfds

    class_names, files = scan_folder(folder)
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="jpeg"),
        "label": tfds.features.ClassLabel(names=list(class_names)),
    })

    def examples(paths, labels):
        for i, (path, label) in enumerate(zip(paths, labels)):
            with open(path, "rb") as f:
                yield i, {"image": io.BytesIO(f.read()), "label": int(label)}

    return tfds.dataset_builders.store_as_tfds_dataset(
        name=name, version="1.0.0", features=features, data_dir=data_dir,
        split_datasets={split: examples(*pair) for split, pair in files.items()})
