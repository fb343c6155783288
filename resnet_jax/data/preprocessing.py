"""Encoded image -> model input, in TensorFlow, one example at a time (inside tf.data.Dataset.map).

Train augmentations (float32 [S, S, C], S = image_size):
  paper_imagenet  shorter side resized to a random size in [256, 480] (scaled by S / 224), random S x S
                  crop, horizontal flip, AlexNet PCA colour noise (std 0.1): He et al. 2015, sec. 3.4.
  inception       random-resized crop (area 0.08-1 of the image, aspect 3/4-4/3) resized to S x S, flip.
  cifar           pad S / 8 pixels with zeros (after normalisation, so the padding is the mean), random
                  S x S crop, flip.
  none            the eval centre view.
JPEG train crops decode only the crop window (tf.image.decode_and_crop_jpeg); randomness is stateless,
from a per-example seed, so an example's augmentation does not depend on thread scheduling.

Eval views (the shorter side is resized with antialiased bilinear interpolation and rounded to whole
pixel values, as torchvision does on PIL images; crops are taken as torchvision's CenterCrop does):
  center       {"image": [S, S, C]}: shorter side to resize_size, centre crop S.
  ten_crop     {"image": [10, S, S, C]}: shorter side to resize_size; the 4 corner crops and the centre
               crop, then the same 5 flipped.
  multi_scale  {"image_<s>": [2, s, s, C] for s in eval_scales}: shorter side to s, centre s x s crop
               and its flip (the paper's fully-convolutional testing, cropped to a square so views
               batch).
Normalisation: (pixel - mean) / std with pixels on the 0-255 scale; mean is per channel [C] or a
per-pixel mean image [S, S, C].
"""

import dataclasses

import numpy as np

from resnet_jax.data.tf_runtime import tensorflow

PAPER_SHORTER_SIDE = (256, 480)  # at crop size 224
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_ASPECT = (3 / 4, 4 / 3)
# AlexNet's PCA of ImageNet RGB pixels (0-1 scale): eigenvalues and eigenvectors (columns).
PCA_EIGENVALUES = np.array([0.2175, 0.0188, 0.0045], np.float32)
PCA_EIGENVECTORS = np.array([[-0.5675, 0.7192, 0.4009],
                             [-0.5808, -0.0045, -0.8140],
                             [-0.5836, -0.6948, 0.4203]], np.float32)
PCA_NOISE_STD = 0.1
# libjpeg's accurate integer DCT, as PIL decodes (TensorFlow's default, the fast one, differs from it by
# up to about 9 grey levels).
JPEG_DCT = "INTEGER_ACCURATE"


def cifar_padding(image_size: int) -> int:
    """Pixels of zero padding around an image before the cifar augmentation's random crop."""
    return max(1, image_size // 8)


def decode(encoded, channels: int):
    """uint8 [H, W, channels] from JPEG, PNG, GIF (first frame) or BMP bytes."""
    tf = tensorflow()
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=channels, dct_method=JPEG_DCT),
        lambda: tf.io.decode_image(encoded, channels=channels, expand_animations=False))
    image.set_shape([None, None, channels])
    return image


def decode_window(encoded, window_fn, channels: int):
    """uint8 [h, w, channels]: the window (y, x, h, w) = window_fn(height, width) of the image; for a
    JPEG only that window is decoded."""
    tf = tensorflow()

    def jpeg():
        shape = tf.image.extract_jpeg_shape(encoded)
        window = tf.stack(window_fn(shape[0], shape[1]))
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=channels, dct_method=JPEG_DCT)

    def other():
        image = decode(encoded, channels)
        shape = tf.shape(image)
        y, x, h, w = window_fn(shape[0], shape[1])
        return image[y:y + h, x:x + w]

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    image.set_shape([None, None, channels])
    return image


def resize_shorter_side(image, size: int):
    """float32: the shorter side resized to `size`, the longer to floor(size * long / short) (as
    torchvision's Resize), antialiased bilinear, rounded to whole pixel values; unchanged if already
    so."""
    tf = tensorflow()
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
    short = tf.minimum(h, w)
    new_h = tf.where(h <= w, size, tf.cast(size * h / short, tf.int32))
    new_w = tf.where(h <= w, tf.cast(size * w / short, tf.int32), size)
    image = tf.cast(image, tf.float32)

    def resize():
        resized = tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True)
        return tf.round(tf.clip_by_value(resized, 0.0, 255.0))

    unchanged = tf.logical_and(tf.equal(new_h, shape[0]), tf.equal(new_w, shape[1]))
    return tf.cond(unchanged, lambda: image, resize)


def center_crop(image, size: int):
    """[size, size, C] from the centre (offsets rounded half to even, as torchvision's CenterCrop)."""
    tf = tensorflow()
    shape = tf.shape(image)
    top = tf.cast(tf.round(tf.cast(shape[0] - size, tf.float32) / 2), tf.int32)
    left = tf.cast(tf.round(tf.cast(shape[1] - size, tf.float32) / 2), tf.int32)
    return crop(image, top, left, size)


def crop(image, top, left, size: int):
    """The [size, size, C] window of `image` at (top, left), with its static shape set."""
    window = image[top:top + size, left:left + size]
    window.set_shape([size, size, image.shape[-1]])
    return window


def center_view(encoded, channels: int, resize_size: int, size: int):
    """float32 [size, size, channels] on the 0-255 scale: shorter side to resize_size, centre crop."""
    return center_crop(resize_shorter_side(decode(encoded, channels), resize_size), size)


def _uniform_int(seed, low, high):
    """int32 scalar uniform in [low, high]."""
    tf = tensorflow()
    return tf.random.stateless_uniform([], seed, low, high + 1, dtype=tf.int32)


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """Train and eval transforms of one pipeline; `mean` and `std` are float32 on the 0-255 scale,
    mean [C] or [image_size, image_size, C], std [C] or []."""

    image_size: int
    channels: int
    train_augment: str
    resize_size: int
    eval_crop: str
    eval_scales: tuple[int, ...]
    mean: np.ndarray
    std: np.ndarray

    def normalize(self, image):
        return (image - self.mean) / self.std

    def center_view(self, encoded):
        return center_view(encoded, self.channels, self.resize_size, self.image_size)

    def train(self, encoded, seed):
        """float32 [S, S, C]: the augmented, normalised example; `seed` (int64 [2]) fixes its
        randomness."""
        tf = tensorflow()
        crop_seed, flip_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        if self.train_augment == "none":
            return self.normalize(self.center_view(encoded))
        if self.train_augment == "cifar":
            image = self._cifar_crop(encoded, crop_seed)
        else:
            window = (self._paper_window if self.train_augment == "paper_imagenet"
                      else self._inception_window)
            image = decode_window(encoded, lambda h, w: window(h, w, crop_seed), self.channels)
            image = tf.image.resize(image, [self.image_size, self.image_size], method="bilinear")
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        if self.train_augment == "paper_imagenet" and self.channels == 3:
            image = self._pca_noise(image, noise_seed)
        if self.train_augment != "cifar":
            image = self.normalize(image)
        return image

    def _paper_window(self, height, width, seed):
        """A square window: an S x S crop of the image with its shorter side resized to a random
        size, in the image's own pixels."""
        tf = tensorflow()
        side_seed, y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
        low, high = (round(s * self.image_size / 224) for s in PAPER_SHORTER_SIDE)
        shorter = tf.minimum(height, width)
        resized_shorter = _uniform_int(side_seed, low, high)
        side = tf.cast(tf.round(tf.cast(shorter * self.image_size, tf.float32)
                                / tf.cast(resized_shorter, tf.float32)), tf.int32)
        side = tf.clip_by_value(side, 1, shorter)
        return (_uniform_int(y_seed, 0, height - side), _uniform_int(x_seed, 0, width - side), side,
                side)

    def _inception_window(self, height, width, seed):
        tf = tensorflow()
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.stack([height, width, self.channels]), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seed,
            min_object_covered=0.0, aspect_ratio_range=INCEPTION_ASPECT, area_range=INCEPTION_AREA,
            max_attempts=10)
        return begin[0], begin[1], size[0], size[1]

    def _cifar_crop(self, encoded, seed):
        tf = tensorflow()
        size = self.image_size
        image = tf.cast(decode(encoded, self.channels), tf.float32)
        shape = tf.shape(image)
        image = tf.cond(tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size)),
                        lambda: image,
                        lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=True))
        pad = cifar_padding(size)
        padded = tf.pad(self.normalize(image), [[pad, pad], [pad, pad], [0, 0]])
        return tf.image.stateless_random_crop(padded, [size, size, self.channels], seed)

    def _pca_noise(self, image, seed):
        tf = tensorflow()
        alpha = tf.random.stateless_normal([3], seed, stddev=PCA_NOISE_STD)
        return image + 255.0 * tf.linalg.matvec(PCA_EIGENVECTORS, alpha * PCA_EIGENVALUES)

    def eval(self, encoded) -> dict:
        """The eval views of one example (see the module docstring), normalised."""
        tf = tensorflow()
        if self.eval_crop == "center":
            return {"image": self.normalize(self.center_view(encoded))}
        image = decode(encoded, self.channels)
        size = self.image_size
        if self.eval_crop == "ten_crop":
            resized = resize_shorter_side(image, self.resize_size)
            shape = tf.shape(resized)
            bottom, right = shape[0] - size, shape[1] - size
            crops = [crop(resized, y, x, size)
                     for y, x in ((0, 0), (0, right), (bottom, 0), (bottom, right))]
            crops.append(center_crop(resized, size))
            crops += [tf.image.flip_left_right(c) for c in crops]
            return {"image": self.normalize(tf.stack(crops))}
        views = {}
        for scale in self.eval_scales:
            view = center_crop(resize_shorter_side(image, scale), scale)
            views[f"image_{scale}"] = self.normalize(tf.stack([view, tf.image.flip_left_right(view)]))
        return views

    def eval_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-example shape of each eval view."""
        s, c = self.image_size, self.channels
        if self.eval_crop == "center":
            return {"image": (s, s, c)}
        if self.eval_crop == "ten_crop":
            return {"image": (10, s, s, c)}
        return {f"image_{k}": (2, k, k, c) for k in self.eval_scales}
