"""Datasets held on the devices: examples loaded once, each step's batch gathered by index and
augmented inside the jitted step, so the host only sends a few indices per step.

Arrays (`device_arrays`, replicated on every device): train and eval images [N, S, S, C] (uint8
pixels, or float32 for the synthetic data), int32 labels, and the normalisation: (pixel - mean) /
std with mean [C], [S, S, C] or [] and std [C] or [], on the pixels' own scale.

Train feed of step t: {"index": int32 [B_local]}, this process's rows of the global batch; the
global batch is rows [i * B, (i + 1) * B) of epoch_order(seed, e, N) with (e, i) = divmod(t,
steps_per_epoch), as ArrayPipeline reads them, so resuming at any step continues with the same
examples. Augmentation, from jax.random.fold_in(key(seed), t) over the whole global batch (threefry
is partitionable, so the draws do not depend on the device or process count): `augment_pixels`.
Eval feed: {"index": int32 [E_local], "mask": bool [E_local]}, this process's rows of global eval
batch b, which holds examples [b * E, (b + 1) * E) (past the end: the last example, masked), so
every example is counted exactly once.

`augment_pixels` and `normalize` are also the device half of the host pipelines of file-backed
datasets (tf_pipeline.py), which feed uint8 crops; `FedPipeline` is what both kinds share: the
batches the jitted step makes from the feeds, made again on the host for code that reads batches.
"""

import abc
import dataclasses
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.data.base import Batch, HostSlice, Pipeline, epoch_order


# AlexNet's PCA of ImageNet RGB pixels (0-1 scale): eigenvalues and eigenvectors (columns).
PCA_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGENVECTORS = np.array([[-0.5675, 0.7192, 0.4009],
                             [-0.5808, -0.0045, -0.8140],
                             [-0.5836, -0.6948, 0.4203]], np.float32)
PCA_NOISE_STD = 0.1
# fold_in(key, LIGHTING_STREAM) keys the lighting noise: a stream apart from the two keys that
# crop_offsets_and_flips splits `key` into.
LIGHTING_STREAM = 2


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Random crop of the image padded by `pad` pixels (0: none), if `flip` a mirror, and if
    `lighting` AlexNet's PCA lighting noise (3 channels, no padding)."""

    pad: int = 0
    flip: bool = False
    lighting: bool = False

    @property
    def draws(self) -> bool:
        """Whether it draws anything (needs a key)."""
        return self != Augmentation()


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


def lighting_noise(key: jax.Array, batch: int) -> jax.Array:
    """float32 [batch, 3]: AlexNet's lighting noise on the 0-255 scale, 255 V (alpha * lambda) with
    alpha ~ N(0, PCA_NOISE_STD^2) per image and channel, V and lambda ImageNet's RGB PCA."""
    alpha = PCA_NOISE_STD * jax.random.normal(key, (batch, 3), jnp.float32)
    return 255.0 * (alpha * PCA_EIGENVALUES) @ PCA_EIGENVECTORS.T


def normalize(pixels: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """float32 (pixels - mean) / std; pixels [..., S, S, C] (uint8 or float), mean [C], [S, S, C]
    or [], std [C] or [], on the pixels' scale."""
    return (pixels.astype(jnp.float32) - mean) / std


def augment_pixels(pixels: jax.Array, mean: jax.Array, std: jax.Array, key: jax.Array,
                   augmentation: Augmentation) -> jax.Array:
    """[B, S, S, C] pixels (uint8 or float) -> float32 normalised and augmented model input.

    With padding (cifar, digits): normalise, pad with zeros (the mean), crop, flip (`augment`).
    Without: flip the pixels, add the lighting noise, normalise (a per-pixel mean image is not
    mirrored with the pixels). Crop offsets and flips from crop_offsets_and_flips(key), the lighting
    noise from lighting_noise(fold_in(key, LIGHTING_STREAM)).
    """
    if augmentation.pad:
        return augment(normalize(pixels, mean, std), key, augmentation)
    images = pixels.astype(jnp.float32)
    _, flips = crop_offsets_and_flips(key, images.shape[0], augmentation)
    images = jnp.where(flips[:, None, None, None], images[:, :, ::-1], images)
    if augmentation.lighting:
        noise = lighting_noise(jax.random.fold_in(key, LIGHTING_STREAM), images.shape[0])
        images = images + noise[:, None, None, :]
    return normalize(images, mean, std)


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


class FedPipeline(Pipeline):
    """A pipeline whose batches the jitted step makes from its feeds (train_batch_from_feed,
    eval_batch_from_feed); train_batches and eval_batches make the same batches on the default
    device and fetch them, for code that reads batches on the host."""

    seed: int
    augmentation: Augmentation
    mean: np.ndarray  # float32, broadcast against the images (per channel or per pixel)
    std: np.ndarray

    @abc.abstractmethod
    def train_feed(self, start_step: int = 0) -> Iterator[Batch]:
        """Host-local feeds of steps start_step, start_step + 1, ..."""

    def device_arrays(self) -> dict[str, np.ndarray]:
        """The normalisation's mean and std and, where the augmentation draws anything,
        "augmentation_key": the key data (uint32) of key(seed), an argument of the compiled step
        rather than a constant in it, so runs that differ only in their seed share one step."""
        arrays = {"mean": self.mean, "std": self.std}
        if self.augmentation.draws:
            arrays["augmentation_key"] = np.asarray(jax.random.key_data(jax.random.key(self.seed)))
        return arrays

    def augmented(self, arrays, pixels: jax.Array, step) -> jax.Array:
        """The model input of step `step` from its global batch of pixels (augment_pixels, keyed
        by fold_in(key(seed), step): a function of the step, so resuming is exact)."""
        if not self.augmentation.draws:
            return normalize(pixels, arrays["mean"], arrays["std"])
        key = jax.random.fold_in(jax.random.wrap_key_data(arrays["augmentation_key"]), step)
        return augment_pixels(pixels, arrays["mean"], arrays["std"], key, self.augmentation)

    @abc.abstractmethod
    def eval_feed(self) -> Iterator[Batch]:
        """Host-local feeds of the eval batches."""

    def train_batches(self, start_step: int = 0) -> Iterator[Batch]:
        """This process's rows of the global batches the jitted step makes: each feed is placed at
        this process's rows of a global feed (zeros elsewhere), so that draws over the global batch
        are the step's."""
        arrays = jax.device_put(self.device_arrays())
        make = jax.jit(self.train_batch_from_feed)
        rows, size = self.hosts.local_rows(), self.hosts.global_batch_size
        for step, feed in enumerate(self.train_feed(start_step), start_step):
            if self.hosts.process_count > 1:
                feed = {k: _placed_at(v, rows, size) for k, v in feed.items()}
            yield {k: np.asarray(v)[rows] for k, v in make(arrays, feed, step).items()}

    def eval_batches(self) -> Iterator[Batch]:
        arrays = jax.device_put(self.device_arrays())
        make = jax.jit(self.eval_batch_from_feed)
        for feed in self.eval_feed():
            yield jax.tree.map(np.asarray, make(arrays, feed))


def _placed_at(rows_array: np.ndarray, rows: slice, size: int) -> np.ndarray:
    """`rows_array` at `rows` of zeros [size, ...]."""
    out = np.zeros((size,) + rows_array.shape[1:], rows_array.dtype)
    out[rows] = rows_array
    return out


class DevicePipeline(FedPipeline):
    """A dataset whose train and eval splits live on the devices (see the module docstring)."""

    examples_on_devices = True

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
        return {**super().device_arrays(), "train_images": self.train.images,
                "train_labels": self.train.labels, "eval_images": self.eval.images,
                "eval_labels": self.eval.labels}

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
        return {"image": self.augmented(arrays, arrays["train_images"][feed["index"]], step),
                "label": arrays["train_labels"][feed["index"]]}

    def eval_batch_from_feed(self, arrays, feed):
        return {"image": normalize(arrays["eval_images"][feed["index"]], arrays["mean"],
                                   arrays["std"]),
                "label": arrays["eval_labels"][feed["index"]], "mask": feed["mask"]}
