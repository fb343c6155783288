"""Synthetic data for benchmarks and tests: fixed random images and labels, no files."""

import numpy as np

from resnet_jax.data.base import ArrayPipeline, HostSlice


def synthetic_pipeline(data_config, hosts: HostSlice, seed: int) -> ArrayPipeline:
    """Gaussian images [image_size, image_size, channels] float32 with uniform random labels.

    `data_config` fields: image_size, channels, num_classes, num_train_examples, num_eval_examples.
    """
    rng = np.random.default_rng(seed)
    shape = (data_config.image_size, data_config.image_size, data_config.channels)

    def split(n):
        return (rng.standard_normal((n,) + shape, dtype=np.float32),
                rng.integers(0, data_config.num_classes, n).astype(np.int32))

    return ArrayPipeline(split(data_config.num_train_examples), split(data_config.num_eval_examples),
                         data_config.num_classes, hosts, seed)
