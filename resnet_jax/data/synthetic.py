"""Synthetic data for benchmarks and tests: fixed random images and labels, no files."""

import numpy as np

from resnet_jax.data.base import ArrayPipeline, HostSlice
from resnet_jax.data.on_device import Augmentation, DevicePipeline, Split


def synthetic_pipeline(data_config, hosts: HostSlice, seed: int) -> ArrayPipeline:
    """Gaussian images [image_size, image_size, channels] float32 with uniform random labels.

    `data_config` fields: image_size, channels, num_classes, num_train_examples, num_eval_examples.
    """
    train, test = synthetic_splits(data_config, seed)
    return ArrayPipeline((train.images, train.labels), (test.images, test.labels),
                         data_config.num_classes, hosts, seed)


def synthetic_splits(data_config, seed: int) -> tuple[Split, Split]:
    """(train, eval) of the synthetic dataset described above."""
    rng = np.random.default_rng(seed)
    shape = (data_config.image_size, data_config.image_size, data_config.channels)

    def split(n):
        return Split(rng.standard_normal((n,) + shape, dtype=np.float32),
                     rng.integers(0, data_config.num_classes, n).astype(np.int32))

    return split(data_config.num_train_examples), split(data_config.num_eval_examples)


def synthetic_device_pipeline(data_config, hosts: HostSlice, seed: int) -> DevicePipeline:
    """The same arrays held on the devices (float32, no normalisation, no augmentation)."""
    train, test = synthetic_splits(data_config, seed)
    return DevicePipeline(train, test, data_config.num_classes, 0.0, 1.0, Augmentation(), hosts,
                          seed)
