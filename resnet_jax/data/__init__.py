"""Input pipelines by dataset name; see base.py for the contract every pipeline meets.

digits and synthetic are in-memory arrays; cifar10, cifar100, imagenet2012, tfds (any TFDS dataset
with an image and a label) and folder (<folder>/<split>/<class>/<image>) go through tf.data, which is
imported only when one of those is built.
"""

import dataclasses
from typing import Callable

import resnet_jax.data.catalog as catalog
import resnet_jax.data.splits as splits
from resnet_jax.data.base import Batch, HostSlice, Pipeline
from resnet_jax.data.embedded import digits_pipeline
from resnet_jax.data.synthetic import synthetic_pipeline
from resnet_jax.data.sources import open_source
from resnet_jax.data.tf_pipeline import check_dataset, split_ranges, tf_pipeline
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


def validate_data_config(data_config, require_data: bool = True) -> None:
    """Raise ConfigError naming the config.data field that is not allowed, or (with `require_data`)
    the dataset that is not there, before any compute and without downloading anything."""
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
    if require_data:
        check_dataset(data_config)


def build_pipeline(data_config, hosts: HostSlice, seed: int) -> Pipeline:
    """The pipeline of `data_config.dataset` for this process."""
    return BUILDERS[data_config.dataset](data_config, hosts, seed)


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """A dataset's sizes as a run plans with them, read without decoding an image."""

    num_classes: int
    image_shape: tuple[int, int, int]
    num_train_examples: int
    num_eval_examples: int
    origin: str  # where the sizes come from, for the reader of a plan


def plan_data(data_config, hosts: HostSlice, seed: int) -> DataPlan:
    """The sizes of `data_config`'s splits: from the prepared dataset where it is there, else from
    the published sizes of cifar10, cifar100 and imagenet2012 (default splits or TFDS slices of
    them). Raises ConfigError for any other dataset that is not prepared."""
    shape = (data_config.image_size, data_config.image_size, data_config.channels)
    if data_config.dataset not in catalog.DATASETS:
        pipeline = build_pipeline(data_config, hosts, seed)
        return DataPlan(pipeline.num_classes, pipeline.image_shape, pipeline.num_train_examples,
                        pipeline.num_eval_examples, "in memory")
    entry = catalog.DATASETS[data_config.dataset]
    try:
        source = open_source(data_config)
    except ConfigError:
        if entry.split_sizes is None:
            raise
        train_spec = data_config.train_split or entry.train_split
        eval_spec = data_config.eval_split or entry.eval_split
        sizes = {name: splits.SplitSize(n) for name, n in entry.split_sizes.items()}
        try:
            train, held_out = (splits.count(splits.resolve(s, sizes))
                               for s in (train_spec, eval_spec))
        except (ValueError, KeyError) as e:
            raise ConfigError(f"config.data.train_split={train_spec!r} / eval_split={eval_spec!r} "
                              f"do not name examples of {data_config.dataset} (published splits: "
                              f"{entry.split_sizes}): {e}") from None
        return DataPlan(entry.num_classes, shape, train, held_out,
                        f"published sizes: {data_config.dataset} is not prepared here")
    train_ranges, eval_ranges = split_ranges(source, data_config)
    return DataPlan(source.num_classes, shape, splits.count(train_ranges),
                    splits.count(eval_ranges), f"prepared: {source.name}")


__all__ = ["BUILDERS", "Batch", "DataPlan", "HostSlice", "Pipeline", "build_pipeline",
           "check_dataset", "plan_data", "validate_data_config"]
