"""Input pipelines by dataset name; see base.py for the contract every pipeline meets.

digits and synthetic are in-memory arrays; cifar10, cifar100, imagenet2012, tfds (any TFDS dataset
with an image and a label) and folder (<folder>/<split>/<class>/<image>) go through tf.data, which is
imported only when one of those is built.
"""

from typing import Callable

from resnet_jax.data import catalog
from resnet_jax.data.base import Batch, HostSlice, Pipeline
from resnet_jax.data.embedded import digits_pipeline
from resnet_jax.data.synthetic import synthetic_pipeline
from resnet_jax.data.tf_pipeline import check_dataset, tf_pipeline
from resnet_jax.errors import ConfigError

PipelineBuilder = Callable[..., Pipeline]

# dataset name -> builder(data_config, hosts, seed) -> Pipeline
BUILDERS: dict[str, PipelineBuilder] = {
    "digits": digits_pipeline,
    "synthetic": synthetic_pipeline,
    **{name: tf_pipeline for name in catalog.DATASETS},
}


def _check_choice(data_config, field: str, allowed, none_allowed: bool = False) -> None:
    value = data_config[field]
    if not (value in allowed or (none_allowed and value is None)):
        default = " or None (the dataset's default)" if none_allowed else ""
        raise ConfigError(f"config.data.{field}={value!r} is not allowed; expected one of "
                          f"{list(allowed)}{default}")


def validate_data_config(data_config) -> None:
    """Raise ConfigError naming the config.data field that is not allowed, or the dataset that is not
    there, before any compute and without downloading anything."""
    _check_choice(data_config, "dataset", BUILDERS)
    if data_config.max_shift < 0:
        raise ConfigError(f"config.data.max_shift={data_config.max_shift} must be >= 0")
    if data_config.image_size <= 0:
        raise ConfigError(f"config.data.image_size={data_config.image_size} must be positive")
    if data_config.dataset not in catalog.DATASETS:
        return
    _check_choice(data_config, "train_augment", catalog.TRAIN_AUGMENTS, none_allowed=True)
    _check_choice(data_config, "eval_crop", catalog.EVAL_CROPS)
    _check_choice(data_config, "normalization", catalog.NORMALIZATIONS)
    _check_choice(data_config, "channels", (1, 3))
    resize = data_config.resize_size
    if resize is not None and resize < data_config.image_size:
        raise ConfigError(f"config.data.resize_size={resize} must be >= image_size="
                          f"{data_config.image_size} (or None for the default)")
    scales = tuple(data_config.eval_scales)
    if not scales or any(not isinstance(s, int) or s <= 0 for s in scales):
        raise ConfigError(f"config.data.eval_scales={scales} must be a non-empty tuple of positive "
                          f"ints")
    if data_config.shuffle_buffer is not None and data_config.shuffle_buffer <= 0:
        raise ConfigError(f"config.data.shuffle_buffer={data_config.shuffle_buffer} must be positive "
                          f"(or None for the default)")
    if data_config.normalization == "per_pixel_mean" and data_config.eval_crop == "multi_scale":
        raise ConfigError("config.data.normalization='per_pixel_mean' has a mean image of image_size "
                          "only; use eval_crop 'center' or 'ten_crop', or normalization 'per_channel'")
    if data_config.normalization == "torchvision" and data_config.channels != 3:
        raise ConfigError("config.data.normalization='torchvision' needs channels=3")
    check_dataset(data_config)


def build_pipeline(data_config, hosts: HostSlice, seed: int) -> Pipeline:
    """The pipeline of `data_config.dataset` for this process."""
    return BUILDERS[data_config.dataset](data_config, hosts, seed)


__all__ = ["BUILDERS", "Batch", "HostSlice", "Pipeline", "build_pipeline", "check_dataset",
           "validate_data_config"]
