"""The input-pipeline contract every dataset implements, and the in-memory implementation.

A pipeline yields host-local numpy batches: this process's rows of each global batch.
  train: {"image": float32 [B_local, H, W, C], "label": int32 [B_local]}, endlessly, from a given step;
         the global batch of step t is a function of (seed, t) alone, so a resumed run sees exactly the
         examples an uninterrupted run would, and N processes together see what one process would.
         Exception: TFDS datasets streamed from their files (too large to hold in memory) are read
         as one share of the files per process, so their order is a function of (seed, t, process
         count) (sources.py).
  eval:  {"label": int32 [B_local], "mask": bool [B_local]} and one or more image views: "image"
         float32 [B_local, H, W, C] by default, [B_local, V, H, W, C] for V views of one size, or one
         key per size, "image_<size>", each of either form; the eval step averages over all views.
         Every example of the eval split appears exactly once across all processes, padding rows have
         mask False, and every process yields the same number of batches.
The training loop and evaluation read a pipeline through its feeds: per step (per eval batch) a
host-local dict that the jitted step turns into the batch with `train_batch_from_feed(arrays, feed,
step)` (`eval_batch_from_feed(arrays, feed)`), where `arrays` is `device_arrays()` placed on the
devices once. The in-memory host pipelines here (digits, synthetic) feed the batches themselves,
have no device arrays, and these functions return the feed unchanged; the host pipelines of
file-backed datasets (tf_pipeline.py) feed uint8 images that the step normalises and augments;
pipelines that hold their examples on the devices (on_device.py) feed indices.
"""

import abc
import dataclasses
import math
from typing import Callable, Iterator, Optional

import numpy as np

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class HostSlice:
    """Which part of every global batch this process feeds."""

    global_batch_size: int
    eval_batch_size: int
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        for field in ("global_batch_size", "eval_batch_size"):
            if getattr(self, field) % self.process_count:
                raise ValueError(f"{field}={getattr(self, field)} is not divisible by the process "
                                 f"count {self.process_count}")

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.process_count

    @property
    def local_eval_batch_size(self) -> int:
        return self.eval_batch_size // self.process_count

    def local_rows(self) -> slice:
        """Rows of a global train batch that belong to this process."""
        start = self.process_index * self.local_batch_size
        return slice(start, start + self.local_batch_size)

    def eval_shard(self, num_examples: int) -> tuple[int, int]:
        """[start, stop) of this process's contiguous share of an eval split of `num_examples`."""
        per_process = math.ceil(num_examples / self.process_count)
        start = min(self.process_index * per_process, num_examples)
        return start, min(start + per_process, num_examples)

    def num_eval_batches(self, num_examples: int) -> int:
        """Eval batches per process (equal on every process)."""
        return math.ceil(math.ceil(num_examples / self.process_count) / self.local_eval_batch_size)


def pad_eval_batch(batch: Batch, size: int) -> Batch:
    """Pad a partial eval batch to `size` rows with zeros; adds `mask` (True for real rows). A full
    batch is not copied."""
    n = len(batch["label"])
    out = dict(batch) if n == size else {
        k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)]) for k, v in batch.items()}
    out["mask"] = np.arange(size) < n
    return out


def stack_feeds(feeds: list[Batch]) -> Batch:
    """The feeds of consecutive steps stacked on a new leading axis (one feed: a view, no copy)."""
    if len(feeds) == 1:
        return {k: v[None] for k, v in feeds[0].items()}
    return {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """int64 [num_examples]: the order of the train examples in `epoch`, a function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def steps_per_epoch(num_train_examples: int, global_batch_size: int) -> int:
    """Global steps in one pass over the train split (the last partial batch is dropped)."""
    return max(1, num_train_examples // global_batch_size)


@dataclasses.dataclass(frozen=True)
class DataPlan:
    """A dataset's sizes as a run plans with them, read without decoding an image."""

    num_classes: int
    image_shape: tuple[int, int, int]
    num_train_examples: int
    num_eval_examples: int
    origin: str  # where the sizes come from, for the reader of a plan
    host_bytes_per_image: int  # image bytes the host feeds per train example (0: held on devices)


def host_feed_spec(batch_size: int, image_shape: tuple[int, int, int], dtype=np.float32
                   ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of a host pipeline's train feed of `batch_size` rows: images of
    `dtype` (uint8 from file-backed datasets, float32 from the in-memory ones) and int32 labels."""
    return {"image": ((batch_size, *image_shape), np.dtype(dtype)),
            "label": ((batch_size,), np.dtype(np.int32))}


def image_bytes_per_example(spec: dict[str, tuple[tuple[int, ...], np.dtype]]) -> int:
    """Bytes of one row of a train feed `spec`'s "image" (0 when it feeds no image)."""
    if "image" not in spec:
        return 0
    shape, dtype = spec["image"]
    return int(np.prod(shape[1:])) * dtype.itemsize


class Pipeline(abc.ABC):
    """A dataset's train and eval streams for one process (see the module docstring)."""

    num_classes: int
    image_shape: tuple[int, int, int]
    num_train_examples: int
    num_eval_examples: int
    hosts: HostSlice
    origin: str = "in memory"  # where the examples come from, for the start-up header
    examples_on_devices: bool = False  # held on the devices, the host feeding indices

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.num_train_examples, self.hosts.global_batch_size)

    def plan(self) -> DataPlan:
        """The sizes of the examples this pipeline holds or reads."""
        return DataPlan(self.num_classes, self.image_shape, self.num_train_examples,
                        self.num_eval_examples, self.origin,
                        image_bytes_per_example(self.train_feed_spec()))

    @abc.abstractmethod
    def train_batches(self, start_step: int = 0) -> Iterator[Batch]:
        """Host-local train batches for steps start_step, start_step + 1, ..."""

    @abc.abstractmethod
    def eval_batches(self) -> Iterator[Batch]:
        """Host-local eval batches with masks, covering the eval split exactly once."""

    def device_arrays(self) -> dict[str, np.ndarray]:
        """Arrays the jitted steps read besides the feeds, placed once on every device."""
        return {}

    def train_feed(self, start_step: int = 0) -> Iterator[Batch]:
        """Host-local feeds of steps start_step, start_step + 1, ..."""
        return self.train_batches(start_step)

    def eval_feed(self) -> Iterator[Batch]:
        """Host-local feeds of the eval batches (see eval_batches)."""
        return self.eval_batches()

    def train_feed_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """{key: (shape, dtype)} of one train feed, host-local, known without reading data."""
        return host_feed_spec(self.hosts.local_batch_size, self.image_shape)

    @staticmethod
    def train_batch_from_feed(arrays, feed, step):
        """The global train batch of 0-based `step` from its feed (traced inside the jitted step)."""
        return feed

    @staticmethod
    def eval_batch_from_feed(arrays, feed):
        """The global eval batch from its feed (traced inside the jitted step)."""
        return feed


Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


class ArrayPipeline(Pipeline):
    """A pipeline over arrays held in memory (the embedded and synthetic datasets).

    Order: epoch e is epoch_order(seed, e, N); step t reads rows
    [i * B, (i + 1) * B) of it with i = t mod steps_per_epoch. `augment(images, rng)` transforms a
    whole global batch with rng = default_rng([seed, t, 1]) before this process takes its rows, so
    the result does not depend on the process count.
    """

    def __init__(self, train: tuple[np.ndarray, np.ndarray], eval_: tuple[np.ndarray, np.ndarray],
                 num_classes: int, hosts: HostSlice, seed: int,
                 augment: Optional[Augment] = None):
        self.train_images, self.train_labels = train
        self.eval_images, self.eval_labels = eval_
        self.num_classes = num_classes
        self.image_shape = tuple(self.train_images.shape[1:])
        self.num_train_examples = len(self.train_labels)
        self.num_eval_examples = len(self.eval_labels)
        self.hosts = hosts
        self.seed = seed
        self.augment = augment
        if self.num_train_examples < hosts.global_batch_size:
            raise ValueError(f"global_batch_size={hosts.global_batch_size} exceeds the "
                             f"{self.num_train_examples} train examples")

    def global_indices(self, step: int) -> np.ndarray:
        """Train-set indices of the global batch of `step`."""
        epoch, i = divmod(step, self.steps_per_epoch)
        b = self.hosts.global_batch_size
        return epoch_order(self.seed, epoch, self.num_train_examples)[i * b:(i + 1) * b]

    def train_batches(self, start_step: int = 0) -> Iterator[Batch]:
        step = start_step
        rows = self.hosts.local_rows()
        while True:
            idx = self.global_indices(step)
            images = self.train_images[idx]
            if self.augment is not None:
                images = self.augment(images, np.random.default_rng([self.seed, step, 1]))
            yield {"image": images[rows].astype(np.float32), "label": self.train_labels[idx][rows]}
            step += 1

    def eval_batches(self) -> Iterator[Batch]:
        start, stop = self.hosts.eval_shard(self.num_eval_examples)
        size = self.hosts.local_eval_batch_size
        for b in range(self.hosts.num_eval_batches(self.num_eval_examples)):
            lo, hi = min(start + b * size, stop), min(start + (b + 1) * size, stop)
            yield pad_eval_batch({"image": self.eval_images[lo:hi].astype(np.float32),
                                  "label": self.eval_labels[lo:hi]}, size)
