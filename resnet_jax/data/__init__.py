"""Input pipelines by dataset name; see base.py for the contract every pipeline meets.

digits and synthetic are in-memory arrays; cifar10, cifar100, imagenet2012, tfds (any TFDS dataset
with an image and a label) and folder (<folder>/<split>/<class>/<image>) go through tf.data, which is
imported only when one of those is built.

config.data.placement chooses where the examples live: "host" (the pipelines above), "device"
(on_device.py: loaded once onto the devices, batches made inside the jitted step) or "auto": on
the devices when the dataset can be (digits, synthetic; TFDS and folder datasets with
train_augment cifar or none and eval_crop center) and both splits take at most
DEVICE_BUDGET_BYTES there.
"""

import dataclasses
from typing import Callable

import numpy as np

import resnet_jax.data.catalog as catalog
import resnet_jax.data.splits as splits
from resnet_jax.data.base import Batch, DataPlan, HostSlice, Pipeline
from resnet_jax.data.embedded import digits_device_pipeline, digits_pipeline
from resnet_jax.data.synthetic import synthetic_device_pipeline, synthetic_pipeline
from resnet_jax.data.sources import open_source
from resnet_jax.data.tf_pipeline import check_dataset, split_ranges, tf_device_pipeline, tf_pipeline
from resnet_jax.errors import ConfigError

PipelineBuilder = Callable[..., Pipeline]

# dataset name -> builder(data_config, hosts, seed) -> Pipeline
BUILDERS: dict[str, PipelineBuilder] = {
    "digits": digits_pipeline,
    "synthetic": synthetic_pipeline,
    **{name: tf_pipeline for name in catalog.DATASETS},
}
# dataset name -> builder of its DevicePipeline (same signature)
DEVICE_BUILDERS: dict[str, PipelineBuilder] = {
    "digits": digits_device_pipeline,
    "synthetic": synthetic_device_pipeline,
    **{name: tf_device_pipeline for name in catalog.DATASETS},
}
PLACEMENTS = ("auto", "device", "host")
# Both splits of a dataset that "auto" places on the devices (each device holds a copy): CIFAR
# takes 184 MB as uint8, 64x64 Tiny ImageNet 1.3 GB; ImageNet stays on the host.
DEVICE_BUDGET_BYTES = 2 << 30


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
    _check_choice(data_config, "placement", PLACEMENTS)
    if data_config.placement == "device" and device_unsupported(data_config):
        raise ConfigError(f"config.data.placement='device' is not possible: "
                          f"{device_unsupported(data_config)}; use 'host' or 'auto'")
    if data_config.max_shift < 0:
        raise ConfigError(f"config.data.max_shift={data_config.max_shift} must be >= 0")
    if data_config.image_size <= 0:
        raise ConfigError(f"config.data.image_size={data_config.image_size} must be positive")
    if data_config.dataset == "synthetic":
        for field in ("num_classes", "num_train_examples", "num_eval_examples"):
            if data_config[field] <= 0:
                raise ConfigError(f"config.data.{field}={data_config[field]} must be positive")
    if data_config.dataset not in catalog.DATASETS:
        return
    _check_choice(data_config, "train_augment", catalog.TRAIN_AUGMENTS, none_allowed=True)
    _check_choice(data_config, "eval_crop", catalog.EVAL_CROPS)
    _check_choice(data_config, "normalization", catalog.NORMALIZATIONS, none_allowed=True)
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


def device_unsupported(data_config) -> str:
    """Why `data_config` cannot be held on the devices, or "" when it can."""
    name = data_config.dataset
    if name not in DEVICE_BUILDERS:
        return f"dataset {name!r} has no device-resident loader"
    if name not in catalog.DATASETS:
        return ""
    augment = catalog.train_augment(data_config)
    if augment not in ("cifar", "none"):
        return (f"train_augment {augment!r} decodes and resizes every example anew (on the devices:"
                f" 'cifar' or 'none')")
    if data_config.eval_crop != "center":
        return f"eval_crop {data_config.eval_crop!r} (on the devices: 'center')"
    if data_config.shuffle_buffer is not None:
        return "shuffle_buffer is set, which streams the train split through a buffer"
    return ""


def device_bytes(data_config, hosts: HostSlice, seed: int) -> int:
    """Bytes both splits take on each device: uint8 images (float32 for synthetic) and labels."""
    d = data_config
    if d.dataset == "synthetic":
        pixel_bytes, shape = 4, (d.image_size, d.image_size, d.channels)
        examples = d.num_train_examples + d.num_eval_examples
    else:
        plan = _split_sizes(d, hosts, seed)
        pixel_bytes, shape = 1, plan.image_shape
        examples = plan.num_train_examples + plan.num_eval_examples
    return examples * (int(np.prod(shape)) * pixel_bytes + 4)


def on_devices(data_config, hosts: HostSlice, seed: int) -> bool:
    """Whether config.data.placement (see the module docstring) puts the examples on the devices."""
    if data_config.placement == "auto":
        return (not device_unsupported(data_config)
                and device_bytes(data_config, hosts, seed) <= DEVICE_BUDGET_BYTES)
    return data_config.placement == "device"


def host_feed_dtype(data_config) -> np.dtype:
    """The dtype of the images the host pipeline of `data_config` feeds: uint8 crops from TFDS and
    folder datasets (normalised in the step), float32 from the digits and synthetic data."""
    return np.dtype(np.uint8 if data_config.dataset in catalog.DATASETS else np.float32)


def build_pipeline(data_config, hosts: HostSlice, seed: int) -> Pipeline:
    """The pipeline of `data_config.dataset` for this process, on the host or on the devices."""
    builders = DEVICE_BUILDERS if on_devices(data_config, hosts, seed) else BUILDERS
    return builders[data_config.dataset](data_config, hosts, seed)


def plan_data(data_config, hosts: HostSlice, seed: int) -> DataPlan:
    """The sizes of `data_config`'s splits: from the prepared dataset where it is there, else from
    the published sizes of cifar10, cifar100 and imagenet2012 (default splits or TFDS slices of
    them), and the image bytes the host feeds per train example. Raises ConfigError for any other
    dataset that is not prepared."""
    plan = _split_sizes(data_config, hosts, seed)
    if on_devices(data_config, hosts, seed):
        return dataclasses.replace(plan, host_bytes_per_image=0)
    return plan


def _split_sizes(data_config, hosts: HostSlice, seed: int) -> DataPlan:
    """plan_data's sizes, with the host bytes per image of the host pipeline (file-backed datasets
    feed uint8 images)."""
    if data_config.dataset not in catalog.DATASETS:
        return BUILDERS[data_config.dataset](data_config, hosts, seed).plan()
    shape = (data_config.image_size, data_config.image_size, data_config.channels)
    pixels = int(np.prod(shape))
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
                        f"published sizes: {data_config.dataset} is not prepared here", pixels)
    train_ranges, eval_ranges = split_ranges(source, data_config)
    return DataPlan(source.num_classes, shape, splits.count(train_ranges),
                    splits.count(eval_ranges), f"prepared: {source.name}", pixels)


__all__ = ["BUILDERS", "Batch", "DEVICE_BUILDERS", "DataPlan", "HostSlice", "Pipeline",
           "build_pipeline", "check_dataset", "host_feed_dtype", "on_devices", "plan_data",
           "validate_data_config"]
