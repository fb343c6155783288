"""Where a dataset's encoded images come from, and in which order each process reads them per epoch.

  TFDSSource      a prepared TFDS dataset (tfrecord shards, read sequentially), for splits too large to
                  hold in memory (ImageNet). Process i reads its even share of the train split
                  (splits.train_share); each epoch shuffles the share's files (TFDS shuffle_files,
                  seeded) and then its records through a buffer of `shuffle_buffer`. The order is a
                  function of (seed, epoch, process_index, process_count): resuming with a different
                  process count continues with a different order.
  InMemorySource  the train split of a TFDS dataset whose encoded images fit in MEMORY_BUDGET_BYTES
                  (CIFAR), read once into memory; epochs as for folders.
  FolderSource    image files <folder>/<split>/<class>/<image> (random access).
For the last two, each epoch is one permutation of the whole train split from (seed, epoch) and process
i reads its rows of every global batch, so the order does not depend on the process count.

All yield tf.data datasets of {"image": tf.string, "label": tf.int32}; an epoch's elements also carry
"key" (tf.int64, unique within the epoch: the example's augmentation seed). `load` turns "image" into
encoded bytes (a file read for folders, else nothing), so skipping elements before it is cheap.
"""
import abc
import functools
import os
from typing import Mapping

import numpy as np

import resnet_jax.data.catalog as catalog
import resnet_jax.data.splits as splits
from resnet_jax.data.base import HostSlice
from resnet_jax.data.splits import Range
from resnet_jax.data.tf_runtime import dataset_options, tensorflow
from resnet_jax.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Encoded images a train split may take in memory (InMemorySource), or the default shuffle buffer.
MEMORY_BUDGET_BYTES = 1 << 30


class Source(abc.ABC):
    """A dataset on disk: its splits, class count, and example streams."""

    name: str
    num_classes: int
    split_sizes: Mapping  # split name -> object with num_examples

    def resolve(self, spec: str) -> list[Range]:
        return splits.resolve(spec, self.split_sizes)

    @abc.abstractmethod
    def read(self, ranges: list[Range]):
        """tf.data.Dataset of exactly the examples of `ranges`, in a fixed order."""

    @abc.abstractmethod
    def epoch(self, ranges: list[Range], hosts: HostSlice, steps: int, seed: int):
        """tf.data.Dataset of this process's examples of one epoch over `ranges` (steps *
        local_batch_size of them, with "key"), in reading order; `seed` is the epoch's seed."""

    def load(self, image):
        """Encoded image bytes from a stream's "image"."""
        return image


class TFDSSource(Source):
    """A prepared TFDS dataset whose features include one Image and one ClassLabel."""

    def __init__(self, builder, shuffle_buffer=None):
        import tensorflow_datasets as tfds

        self.builder = builder
        self.name = builder.name
        features = builder.info.features
        self.image_key = _single_feature(features, tfds.features.Image, "image", self.name)
        self.label_key = _single_feature(features, tfds.features.ClassLabel, "label", self.name)
        self.num_classes = features[self.label_key].num_classes
        self.split_sizes = builder.info.splits
        self.shuffle_buffer = shuffle_buffer

    def read(self, ranges, shuffle_seed=None):
        """With `shuffle_seed`, the files are read in an order shuffled by it."""
        import tensorflow_datasets as tfds

        tf = tensorflow()
        read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, interleave_block_length=1,
                                      options=dataset_options())
        ds = self.builder.as_dataset(split=splits.to_spec(ranges),
                                     shuffle_files=shuffle_seed is not None, read_config=read_config,
                                     decoders={self.image_key: tfds.decode.SkipDecoding()})
        return ds.map(lambda ex: {"image": ex[self.image_key],
                                  "label": tf.cast(ex[self.label_key], tf.int32)})

    def encoded_bytes(self, ranges: list[Range]) -> float:
        """Estimated size of the encoded examples of `ranges` (from the splits' sizes on disk)."""
        return sum(len(r) * int(self.split_sizes[r.split].num_bytes)
                   / max(1, self.split_sizes[r.split].num_examples) for r in ranges)

    def epoch(self, ranges, hosts, steps, seed):
        start, stop = splits.train_share(splits.count(ranges), hosts)
        share = splits.take(ranges, start, stop)
        host_seed = int(np.random.SeedSequence([seed, hosts.process_index]).generate_state(1)[0])
        bytes_per_example = max(1.0, self.encoded_bytes(share) / (stop - start))
        fitting = int(MEMORY_BUDGET_BYTES / bytes_per_example)
        buffer = self.shuffle_buffer or max(1, min(stop - start, fitting))
        examples = steps * hosts.local_batch_size
        first_key = hosts.process_index * examples
        ds = self.read(share, shuffle_seed=host_seed)
        ds = ds.shuffle(buffer, seed=host_seed, reshuffle_each_iteration=False).take(examples)
        return ds.enumerate(first_key).map(lambda key, ex: dict(ex, key=key))


class InMemorySource(Source):
    """The examples of `ranges` of a TFDSSource, read once into memory as encoded bytes; other reads
    go to the TFDSSource."""

    def __init__(self, source: TFDSSource, ranges: list[Range]):
        self.source, self.ranges = source, ranges
        self.name, self.num_classes = source.name, source.num_classes
        self.split_sizes = source.split_sizes
        images, labels = [], []
        for batch in source.read(ranges).batch(1024).as_numpy_iterator():
            images.extend(batch["image"])
            labels.append(batch["label"])
        if len(images) != splits.count(ranges):
            raise ValueError(f"{self.name}: read {len(images)} examples of {splits.to_spec(ranges)}, "
                             f"expected {splits.count(ranges)}")
        self.images = tensorflow().constant(images)
        self.labels = np.concatenate(labels)

    def read(self, ranges):
        if ranges == self.ranges:
            return tensorflow().data.Dataset.from_tensor_slices({"image": self.images,
                                                                "label": self.labels})
        return self.source.read(ranges)

    def epoch(self, ranges, hosts, steps, seed):
        if ranges != self.ranges:
            raise ValueError(f"{self.name}: holds {splits.to_spec(self.ranges)} in memory, not "
                             f"{splits.to_spec(ranges)}")
        tf = tensorflow()
        keys, rows = epoch_rows(len(self.labels), hosts, steps, seed)
        ds = tf.data.Dataset.from_tensor_slices({"key": keys, "row": rows, "label": self.labels[rows]})
        return ds.map(lambda ex: {"key": ex["key"], "image": tf.gather(self.images, ex["row"]),
                                  "label": ex["label"]})


class FolderSource(Source):
    """Images in <root>/<split>/<class>/<image>; classes are the sorted class-folder names of all
    splits, examples of a split are sorted by class then file name."""

    def __init__(self, root: str):
        self.name = root
        self.class_names, self.files = scan_folder(root)
        self.num_classes = len(self.class_names)
        self.split_sizes = {s: splits.SplitSize(len(p)) for s, (p, _) in self.files.items()}

    def _gather(self, ranges) -> tuple[np.ndarray, np.ndarray]:
        paths = np.concatenate([self.files[r.split][0][r.start:r.stop] for r in ranges])
        labels = np.concatenate([self.files[r.split][1][r.start:r.stop] for r in ranges])
        return paths, labels

    def read(self, ranges):
        paths, labels = self._gather(ranges)
        return tensorflow().data.Dataset.from_tensor_slices({"image": paths, "label": labels})

    def epoch(self, ranges, hosts, steps, seed):
        paths, labels = self._gather(ranges)
        keys, rows = epoch_rows(len(paths), hosts, steps, seed)
        return tensorflow().data.Dataset.from_tensor_slices(
            {"key": keys, "image": paths[rows], "label": labels[rows]})

    def load(self, image):
        return tensorflow().io.read_file(image)


def epoch_rows(num_examples: int, hosts: HostSlice, steps: int, seed: int):
    """(keys, rows), int64 [steps * local_batch_size]: this process's part of an epoch that is one
    permutation of num_examples from `seed`, cut into global batches; keys are positions in the
    epoch, rows the examples."""
    batch = hosts.global_batch_size
    order = np.random.default_rng(seed).permutation(num_examples)[:steps * batch]
    local = hosts.local_rows()
    keys = np.arange(steps * batch).reshape(steps, batch)[:, local].ravel()
    return keys, order.reshape(steps, batch)[:, local].ravel()


def train_source(source: Source, ranges: list[Range], shuffle_buffer) -> Source:
    """The source train epochs read: an InMemorySource for a TFDS train split within
    MEMORY_BUDGET_BYTES when no shuffle_buffer is set, else `source` itself."""
    if (isinstance(source, TFDSSource) and shuffle_buffer is None
            and source.encoded_bytes(ranges) <= MEMORY_BUDGET_BYTES):
        return InMemorySource(source, ranges)
    return source


@functools.lru_cache(maxsize=4)
def scan_folder(root: str) -> tuple[tuple[str, ...], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """(class names, {split: (paths, int32 labels)}) of <root>/<split>/<class>/<image>."""
    layout = "expected <folder>/<split>/<class>/<image> (e.g. <folder>/train/cat/1.jpg)"
    tree = {}
    for split in sorted(e.name for e in os.scandir(root) if e.is_dir()):
        split_dir = os.path.join(root, split)
        if any(_is_image(e) for e in os.scandir(split_dir)):
            raise ConfigError(f"config.data.folder={root!r}: {split_dir} holds images directly; "
                              f"{layout}")
        tree[split] = {c.name: sorted(f.name for f in os.scandir(c.path) if _is_image(f))
                       for c in os.scandir(split_dir) if c.is_dir()}
    class_names = tuple(sorted({c for classes in tree.values() for c in classes}))
    index = {name: i for i, name in enumerate(class_names)}
    files = {}
    for split, classes in tree.items():
        pairs = [(os.path.join(root, split, c, f), index[c])
                 for c in sorted(classes) for f in classes[c]]
        if pairs:
            paths, labels = zip(*pairs)
            files[split] = (np.array(paths), np.array(labels, np.int32))
    if not files:
        raise ConfigError(f"config.data.folder={root!r} holds no images "
                          f"({', '.join(IMAGE_EXTENSIONS)}); {layout}")
    return class_names, files


def _is_image(entry: os.DirEntry) -> bool:
    return entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)


def _single_feature(features, feature_type, preferred: str, name: str) -> str:
    """The key of the top-level feature of `feature_type` (`preferred` if several)."""
    keys = [k for k in features.keys() if isinstance(features[k], feature_type)]
    if preferred in keys:
        return preferred
    if len(keys) == 1:
        return keys[0]
    raise ConfigError(f"config.data.tfds_name={name!r}: expected one {feature_type.__name__} feature, "
                      f"found {keys or 'none'} among {list(features.keys())}")


def open_source(data_config) -> Source:
    """The source of a file-backed dataset; ConfigError, naming the field, when it is not there.

    Never downloads: a TFDS dataset must already be prepared in data_dir.
    """
    if data_config.dataset == "folder":
        root = data_config.folder
        if not root or not os.path.isdir(root):
            raise ConfigError(f"config.data.folder={root!r} is not a directory; dataset='folder' needs "
                              f"one laid out as <folder>/<split>/<class>/<image>")
        return FolderSource(root)
    import tensorflow_datasets as tfds

    name = catalog.tfds_name(data_config)
    if not name:
        raise ConfigError("config.data.tfds_name is not set; dataset='tfds' needs a TFDS dataset name")
    try:
        builder = tfds.builder(name, data_dir=data_config.data_dir)
    except tfds.core.DatasetNotFoundError:
        raise ConfigError(f"config.data.tfds_name={name!r}: no TFDS dataset of that name is registered "
                          f"or prepared in config.data.data_dir={data_config.data_dir!r}") from None
    if not builder.is_prepared():
        data_dir = str(builder.data_dir_root)
        raise ConfigError(
            f"config.data.data_dir={data_config.data_dir!r}: {name} is not prepared in {data_dir} "
            f"(no {builder.data_dir}/dataset_info.json): "
            + catalog.prepare_instructions(data_config, name, data_dir))
    return TFDSSource(builder, data_config.shuffle_buffer)
