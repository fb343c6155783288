"""The pipeline of file-backed datasets (TFDS datasets, image folders) through tf.data.

Train feed, epoch e of this process: source.epoch(train split, seed_e) (sources.py: which examples, in
which order) -> skip the examples of the steps already done (before any image is decoded; a folder's
files are not even opened) -> load, decode and crop (preprocessing.py; parallel, deterministic) ->
host-local batches {"image": uint8 [B_local, S, S, C], "label": int32 [B_local]} -> prefetch. seed_e
and the crop seeds come from (seed, e), so a run resumed at step t continues at exactly the example
where an uninterrupted run would be. Inside the jitted step, `train_batch_from_feed` flips, adds the
lighting noise, normalises and (cifar) pads and crops the global batch (on_device.augment_pixels),
its draws from jax.random.fold_in(key(seed), t): a function of the step, so resuming is exact.
Eval feed: this process's contiguous share of the eval split (HostSlice.eval_shard), in a fixed
order, as uint8 views; the last batch is padded (mask False) and all-padding batches are added so
every process yields HostSlice.num_eval_batches batches. `eval_batch_from_feed` normalises the views.
The normalisation constants (float32, 0-255 scale: mean [C] or [S, S, C], std [C] or []) are the
pipeline's device arrays.
"""

import math
from typing import Iterator

import numpy as np

import resnet_jax.data.catalog as catalog
import resnet_jax.data.splits as splits
from resnet_jax.data.base import Batch, HostSlice, host_feed_spec, pad_eval_batch
from resnet_jax.data.on_device import Augmentation, DevicePipeline, FedPipeline, Split, normalize
from resnet_jax.data.preprocessing import Preprocessor, cifar_padding, eval_views
from resnet_jax.data.sources import Source, open_source, train_source
from resnet_jax.data.splits import Range
from resnet_jax.data.tf_runtime import dataset_options, tensorflow
from resnet_jax.errors import ConfigError

STATISTICS_EXAMPLES = 50_000  # train examples measured for per_pixel_mean, or unpublished channel stats
STATISTICS_BATCH = 256


class TFDataPipeline(FedPipeline):
    """Train and eval feeds of one process (see the module docstring): train epochs from
    `train_source`, eval reads from `source`; `mean` and `std` normalise on the devices."""

    def __init__(self, source: Source, train_source: Source, train_ranges: list[Range],
                 eval_ranges: list[Range], preprocessor: Preprocessor, mean, std,
                 hosts: HostSlice, seed: int):
        self.source, self.train_source = source, train_source
        self.train_ranges, self.eval_ranges = train_ranges, eval_ranges
        self.preprocessor = preprocessor
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.augmentation = preprocessor.augmentation()
        self.hosts = hosts
        self.seed = seed
        self.num_classes = source.num_classes
        self.origin = f"prepared: {source.name}"
        self.image_shape = (preprocessor.image_size, preprocessor.image_size, preprocessor.channels)
        self.num_train_examples = splits.count(train_ranges)
        self.num_eval_examples = splits.count(eval_ranges)
        if self.num_train_examples < hosts.global_batch_size:
            raise ConfigError(f"config.global_batch_size={hosts.global_batch_size} exceeds the "
                              f"{self.num_train_examples} examples of config.data.train_split")

    def epoch_seeds(self, epoch: int) -> tuple[int, int]:
        """(order seed, crop seed) of `epoch`."""
        order, augment = np.random.SeedSequence([self.seed, epoch]).generate_state(2)
        return int(order), int(augment)

    def train_dataset(self, epoch: int, first_step: int = 0):
        """tf.data.Dataset of this process's batches of steps first_step, first_step + 1, ... of
        `epoch` (indices within the epoch)."""
        tf = tensorflow()
        order_seed, augment_seed = self.epoch_seeds(epoch)
        local = self.hosts.local_batch_size
        ds = self.train_source.epoch(self.train_ranges, self.hosts, self.steps_per_epoch, order_seed)

        def prepare(example):
            seed = tf.stack([tf.constant(augment_seed, tf.int64), example["key"]])
            image = self.preprocessor.train(self.train_source.load(example["image"]), seed)
            return {"image": image, "label": example["label"]}

        ds = ds.skip(first_step * local)
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return ds.with_options(dataset_options())

    def train_feed(self, start_step: int = 0) -> Iterator[Batch]:
        epoch, first_step = divmod(start_step, self.steps_per_epoch)
        while True:
            yield from self.train_dataset(epoch, first_step).as_numpy_iterator()
            epoch, first_step = epoch + 1, 0

    def train_feed_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return host_feed_spec(self.hosts.local_batch_size, self.image_shape, np.uint8)

    def train_batch_from_feed(self, arrays, feed, step):
        return {"image": self.augmented(arrays, feed["image"], step), "label": feed["label"]}

    def eval_batch_from_feed(self, arrays, feed):
        return {k: normalize(v, arrays["mean"], arrays["std"]) if k.startswith("image") else v
                for k, v in feed.items()}

    def eval_dataset(self):
        """tf.data.Dataset of this process's eval batches (the last may be partial), or None if its
        share is empty."""
        tf = tensorflow()
        start, stop = self.hosts.eval_shard(self.num_eval_examples)
        if start == stop:
            return None

        ds = self.source.read(splits.take(self.eval_ranges, start, stop)).take(stop - start)
        ds = encoded_batches(self.source, ds, self.hosts.local_eval_batch_size)
        ds = ds.map(lambda encoded, labels: dict(self.preprocessor.eval(encoded), label=labels),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE).with_options(dataset_options())

    def eval_feed(self) -> Iterator[Batch]:
        size = self.hosts.local_eval_batch_size
        ds = self.eval_dataset()
        produced = 0
        for batch in ds.as_numpy_iterator() if ds is not None else ():
            yield pad_eval_batch(batch, size)
            produced += 1
        empty = {k: np.zeros((0,) + s, np.uint8) for k, s in self.preprocessor.eval_shapes().items()}
        empty["label"] = np.zeros((0,), np.int32)
        for _ in range(self.hosts.num_eval_batches(self.num_eval_examples) - produced):
            yield pad_eval_batch(empty, size)


def split_ranges(source: Source, data_config) -> tuple[list[Range], list[Range]]:
    """(train ranges, eval ranges) of config.data.train_split and eval_split, or of the dataset's
    defaults."""
    entry = catalog.DATASETS[data_config.dataset]
    eval_spec = data_config.eval_split or entry.eval_split
    if eval_spec is None:
        eval_spec = next((s for s in catalog.EVAL_SPLIT_CANDIDATES if s in source.split_sizes), None)
        if eval_spec is None:
            raise ConfigError(f"config.data.eval_split is not set and {source.name} has none of the "
                              f"splits {catalog.EVAL_SPLIT_CANDIDATES} (it has "
                              f"{sorted(source.split_sizes)}); set it, e.g. 'train[90%:]' with "
                              f"train_split='train[:90%]'")
    ranges = []
    for field, spec in (("train_split", data_config.train_split or entry.train_split),
                        ("eval_split", eval_spec)):
        try:
            resolved = source.resolve(spec)
        except (ValueError, KeyError) as e:
            raise ConfigError(f"config.data.{field}={spec!r} does not name examples of "
                              f"{source.name} (splits: {_describe(source)}): {e}") from None
        if not splits.count(resolved):
            raise ConfigError(f"config.data.{field}={spec!r} names no examples of {source.name}")
        ranges.append(resolved)
    return ranges[0], ranges[1]


def _describe(source: Source) -> str:
    return ", ".join(f"{name} ({size.num_examples:,})" for name, size in source.split_sizes.items())


def encoded_batches(source: Source, ds, batch_size: int):
    """`ds`'s examples as batches (encoded images string [n], labels [n]), the last one partial,
    the source's bytes loaded one example at a time: the eval views are computed per batch
    (eval_images.eval_view_batch)."""
    tf = tensorflow()
    ds = ds.map(lambda example: (source.load(example["image"]), example["label"]),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size)


def center_view_batches(source: Source, ds, data_config, batch_size: int):
    """`ds`'s examples as prefetched batches (centre views uint8 [n, S, S, C], labels [n])."""
    tf = tensorflow()
    channels, size = data_config.channels, data_config.image_size
    resize = catalog.resize_size(data_config)

    def views(encoded, labels):
        return eval_views(encoded, channels, "center", resize, size, ())["image"], labels

    ds = encoded_batches(source, ds, batch_size)
    ds = ds.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(dataset_options())


def check_dataset(data_config) -> None:
    """ConfigError, naming the field, if the dataset or its splits are not there (no download)."""
    split_ranges(open_source(data_config), data_config)


def measure_statistics(source: Source, ranges: list[Range], data_config,
                       per_pixel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) on the 0-255 scale of the eval centre views of the first STATISTICS_EXAMPLES
    examples of `ranges`: per channel ([C], [C]), or a mean image [S, S, C] and one std []."""
    ds = center_view_batches(source, source.read(splits.take(ranges, 0, STATISTICS_EXAMPLES)),
                             data_config, STATISTICS_BATCH)
    total = total_sq = 0.0
    count = 0
    for images, _ in ds.as_numpy_iterator():
        images = images.astype(np.float64)
        total = total + images.sum(0)
        total_sq = total_sq + np.square(images).sum(0)
        count += len(images)
    mean_image, mean_sq = total / count, total_sq / count
    if per_pixel:
        std = math.sqrt(float(np.mean(mean_sq - np.square(mean_image))))
        return mean_image.astype(np.float32), np.float32(std)
    mean = mean_image.mean((0, 1))
    std = np.sqrt(mean_sq.mean((0, 1)) - np.square(mean))
    return mean.astype(np.float32), std.astype(np.float32)


def normalization_constants(source: Source, train_ranges: list[Range],
                            data_config) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of config.data.normalization: published statistics where the dataset has them
    (ImageNet's for "torchvision"), else measured on the train split; None is per_channel."""
    if data_config.normalization == "per_pixel_mean":
        return measure_statistics(source, train_ranges, data_config, per_pixel=True)
    published = (catalog.IMAGENET_MEAN_STD if data_config.normalization == "torchvision"
                 else catalog.DATASETS[data_config.dataset].mean_std)
    if published and data_config.channels == 3:
        mean, std = (255 * np.array(v, np.float32) for v in published)
        return mean, std
    return measure_statistics(source, train_ranges, data_config, per_pixel=False)


def tf_pipeline(data_config, hosts: HostSlice, seed: int) -> TFDataPipeline:
    """The pipeline of a TFDS or folder dataset described by config.data."""
    source = open_source(data_config)
    train_ranges, eval_ranges = split_ranges(source, data_config)
    train = train_source(source, train_ranges, data_config.shuffle_buffer)
    mean, std = normalization_constants(train, train_ranges, data_config)
    preprocessor = Preprocessor(
        image_size=data_config.image_size, channels=data_config.channels,
        train_augment=catalog.train_augment(data_config), resize_size=catalog.resize_size(data_config),
        eval_crop=data_config.eval_crop, eval_scales=tuple(data_config.eval_scales))
    return TFDataPipeline(source, train, train_ranges, eval_ranges, preprocessor, mean, std, hosts,
                          seed)


def decoded_split(source: Source, ranges: list[Range], data_config) -> Split:
    """The eval centre views of the examples of `ranges`, decoded once: uint8 [N, S, S, C] (whole
    pixel values, as center_view rounds them) and int32 labels."""
    count = splits.count(ranges)
    batches = list(center_view_batches(source, source.read(ranges).take(count), data_config,
                                       1024).as_numpy_iterator())
    labels = np.concatenate([b[1] for b in batches]).astype(np.int32)
    if len(labels) != count:
        raise ValueError(f"{source.name}: read {len(labels)} examples of {splits.to_spec(ranges)}, "
                         f"expected {count}")
    return Split(np.concatenate([b[0] for b in batches]), labels)


def tf_device_pipeline(data_config, hosts: HostSlice, seed: int) -> DevicePipeline:
    """A TFDS or folder dataset held on the devices (train_augment cifar or none, eval_crop center):
    both splits as their centre views (for non-square images the centre square, where the host
    path's cifar augmentation resizes the whole image), normalised as the host path does."""
    source = open_source(data_config)
    train_ranges, eval_ranges = split_ranges(source, data_config)
    mean, std = normalization_constants(source, train_ranges, data_config)
    augmentation = (Augmentation(pad=cifar_padding(data_config.image_size), flip=True)
                    if catalog.train_augment(data_config) == "cifar" else Augmentation())
    return DevicePipeline(decoded_split(source, train_ranges, data_config),
                          decoded_split(source, eval_ranges, data_config), source.num_classes,
                          mean, std, augmentation, hosts, seed, origin=f"prepared: {source.name}")
