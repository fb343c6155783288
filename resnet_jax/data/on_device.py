"""Datasets held on the devices: examples loaded once, each step's batch gathered by index and
augmented inside the jitted step, so the host only sends a few indices per step.

Arrays (`device_arrays`, replicated on every device): train and eval images [N, S, S, C] (uint8
pixels, or float32 for the synthetic data), int32 labels, and the normalisation: (pixel - mean) /
std with mean [C], [S, S, C] or [] and std [C] or [], on the pixels' own scale.

Train feed of step t: {"index": int32 [B_local]}, this process's rows of the global batch; the
global batch is rows [i * B, (i + 1) * B) of epoch_order(seed, e, N) with (e, i) = divmod(t,
steps_per_epoch), as ArrayPipeline reads them, so resuming at any step continues with the same
examples. Augmentation, from jax.random.fold_in(key(seed), t) over the whole global batch (threefry
is partitionable, so the draws do not depend on the device or process count): normalise, pad `pad`
pixels with zeros (the mean after normalising), take an S x S crop at an offset uniform in
[0, 2 * pad]^2 and, with `flip`, mirror it left-right with probability 1/2.
Eval feed: {"index": int32 [E_local], "mask": bool [E_local]}, this process's rows of global eval
batch b, which holds examples [b * E, (b + 1) * E) (past the end: the last example, masked), so
every example is counted exactly once.
"""

import dataclasses
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data.base import Batch, HostSlice, Pipeline, epoch_order


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random crop of the image padded by `pad` pixels (0: none) and, if `flip`, a mirror."""

    pad: int = 0
    flip: bool = False


@dataclasses.dataclass(frozen=True)
class Split:
    """The examples of one split, as held on the devices."""

    images: np.ndarray  # [N, S, S, C], uint8 or float32
    labels: np.ndarray  # int32 [N]


def crop_offsets_and_flips(key: jax.Array, batch: int, augmentation: Augmentation):
    """(offsets int32 [batch, 2] uniform in [0, 2 * pad], flips bool [batch] with P = 1/2 when
    `augmentation.flip`, else all False) from `key`."""
    offset_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(offset_key, (batch, 2), 0, 2 * augmentation.pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (batch,)) & augmentation.flip
    return offsets, flips


def augment(images: jax.Array, key: jax.Array, augmentation: Augmentation) -> jax.Array:
    """float32 [B, S, S, C] normalised images -> the same, padded with zeros, cropped and flipped."""
    pad = augmentation.pad
    offsets, flips = crop_offsets_and_flips(key, images.shape[0], augmentation)
    if pad:
        shape = images.shape[1:]
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        images = jax.vmap(lambda image, yx: jax.lax.dynamic_slice(
            image, (yx[0], yx[1], 0), shape))(padded, offsets)
    return jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)


class DevicePipeline(Pipeline):
    """A dataset whose train and eval splits live on the devices (see the module docstring)."""

    def __init__(self, train: Split, eval_: Split, num_classes: int, mean, std,
                 augmentation: Augmentation, hosts: HostSlice, seed: int,
                 origin: str = "in memory"):
        self.train, self.eval = train, eval_
        self.origin = origin
        self.num_classes = num_classes
        self.image_shape = tuple(train.images.shape[1:])
        self.num_train_examples = len(train.labels)
        self.num_eval_examples = len(eval_.labels)
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.augmentation = augmentation
        self.hosts = hosts
        self.seed = seed
        self._order = (-1, None)
        if self.num_train_examples < hosts.global_batch_size:
            raise ValueError(f"global_batch_size={hosts.global_batch_size} exceeds the "
                             f"{self.num_train_examples} train examples")

    def device_arrays(self) -> dict[str, np.ndarray]:
        return {"train_images": self.train.images, "train_labels": self.train.labels,
                "eval_images": self.eval.images, "eval_labels": self.eval.labels,
                "mean": self.mean, "std": self.std}

    def global_indices(self, step: int) -> np.ndarray:
        """int32 [B]: train-set indices of the global batch of `step`."""
        epoch, i = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:  # one permutation per epoch, not per step
            self._order = (epoch, epoch_order(self.seed, epoch, self.num_train_examples))
        b = self.hosts.global_batch_size
        return self._order[1][i * b:(i + 1) * b].astype(np.int32)

    def train_feed(self, start_step: int = 0) -> Iterator[Batch]:
        rows = self.hosts.local_rows()
        step = start_step
        while True:
            yield {"index": self.global_indices(step)[rows]}
            step += 1

    def train_feed_spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        return {"index": ((self.hosts.local_batch_size,), np.dtype(np.int32))}

    def eval_feed(self) -> Iterator[Batch]:
        size, n = self.hosts.eval_batch_size, self.num_eval_examples
        local = self.hosts.local_eval_batch_size
        rows = slice(self.hosts.process_index * local, (self.hosts.process_index + 1) * local)
        for start in range(0, n, size):
            index = np.arange(start, start + size)[rows]
            yield {"index": np.minimum(index, n - 1).astype(np.int32), "mask": index < n}

    def train_batch_from_feed(self, arrays, feed, step):
        images = self._normalize(arrays, arrays["train_images"][feed["index"]])
        key = jax.random.fold_in(jax.random.key(self.seed), step)
        return {"image": augment(images, key, self.augmentation),
                "label": arrays["train_labels"][feed["index"]]}

    def eval_batch_from_feed(self, arrays, feed):
        return {"image": self._normalize(arrays, arrays["eval_images"][feed["index"]]),
                "label": arrays["eval_labels"][feed["index"]], "mask": feed["mask"]}

    @staticmethod
    def _normalize(arrays, images):
        return (images.astype(jnp.float32) - arrays["mean"]) / arrays["std"]

    def train_batches(self, start_step: int = 0) -> Iterator[Batch]:
        """The host-local batches the training loop makes on the devices, made on the default
        device and fetched (for code that reads batches on the host)."""
        arrays = jax.device_put(self.device_arrays())
        make = jax.jit(self.train_batch_from_feed)
        rows = self.hosts.local_rows()
        step = start_step
        while True:
            batch = make(arrays, {"index": self.global_indices(step)}, step)
            yield {k: np.asarray(v)[rows] for k, v in batch.items()}
            step += 1

    def eval_batches(self) -> Iterator[Batch]:
        arrays = jax.device_put(self.device_arrays())
        make = jax.jit(self.eval_batch_from_feed)
        for feed in self.eval_feed():
            yield jax.tree.map(np.asarray, make(arrays, feed))
