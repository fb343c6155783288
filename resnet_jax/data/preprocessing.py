"""Encoded image -> the pixels the host feeds the devices, inside tf.data.Dataset.map: train crops
in TensorFlow one example at a time, eval views in numpy (eval_images) inside the graph one batch
at a time.
The host does no float arithmetic after the resize: every output is uint8, the rest (flip,
lighting noise, normalisation, cifar's pad and crop) runs on the devices (`augmentation()`,
on_device.augment_pixels).

Train crops (uint8 [S, S, C], S = image_size; the device half in brackets):
  paper_imagenet  a square window of the image that is an S x S crop of it with the shorter side
                  resized to a random size in [256, 480] (scaled by S / 224), resized to S x S [flip,
                  AlexNet PCA lighting noise (std 0.1), normalise]: He et al. 2015, sec. 3.4.
  inception       random-resized crop (area 0.08-1 of the image, aspect 3/4-4/3) resized to S x S
                  [flip, normalise].
  cifar           the image, resized to S x S if it is not [normalise, pad S / 8 pixels with zeros
                  (the mean), random S x S crop, flip].
  none            the eval centre view [normalise].
JPEG train crops decode only the crop window (tf.image.decode_and_crop_jpeg); the crops' randomness is
stateless, from a per-example seed, so an example's crop does not depend on thread scheduling.
Resized crops are rounded to whole pixel values.

Eval views (uint8, placed and filtered as torchvision's Resize and CenterCrop on PIL images, within
one grey level: eval_images; the devices normalise them):
  center       {"image": [S, S, C]}: shorter side to resize_size, centre crop S (only the crop's box
               is resampled).
  ten_crop     {"image": [10, S, S, C]}: shorter side to resize_size; the 4 corner crops and the centre
               crop, then the same 5 flipped.
  multi_scale  {"image_<s>": [2, s, s, C] for s in eval_scales}: shorter side to s, centre s x s crop
               and its flip (the paper's fully-convolutional testing, cropped to a square so views
               batch).
"""

import dataclasses
import functools

import resnet_jax.data.eval_images as eval_images
from resnet_jax.data.on_device import Augmentation
from resnet_jax.data.tf_runtime import tensorflow

PAPER_SHORTER_SIDE = (256, 480)  # at crop size 224
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_ASPECT = (3 / 4, 4 / 3)
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
    """(uint8 [h, w, channels], int32 [2]): the window (y, x, h, w) = window_fn(height, width) of the
    image, for a JPEG decoding only that window, and the image's (height, width)."""
    tf = tensorflow()

    def jpeg():
        shape = tf.image.extract_jpeg_shape(encoded)[:2]
        window = tf.stack(window_fn(shape[0], shape[1]))
        return (tf.image.decode_and_crop_jpeg(encoded, window, channels=channels,
                                              dct_method=JPEG_DCT), shape)

    def other():
        image = decode(encoded, channels)
        shape = tf.shape(image)[:2]
        y, x, h, w = window_fn(shape[0], shape[1])
        return image[y:y + h, x:x + w], shape

    image, shape = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    image.set_shape([None, None, channels])
    return image, shape


def to_pixels(image):
    """uint8: float pixel values rounded to whole values and clipped to [0, 255]."""
    tf = tensorflow()
    return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def view_shapes(channels: int, crop: str, size: int, scales: tuple[int, ...]) -> dict:
    """{name: per-example shape} of the eval views of `crop` (module docstring)."""
    if crop == "center":
        return {"image": (size, size, channels)}
    if crop == "ten_crop":
        return {"image": (10, size, size, channels)}
    return {f"image_{s}": (2, s, s, channels) for s in scales}


def eval_views(encoded, channels: int, crop: str, resize_size: int, size: int,
               scales: tuple[int, ...]) -> dict:
    """{name: uint8 [N, *view shape]} of a batch of encoded images (string [N], N > 0; module
    docstring), computed in numpy (eval_images.eval_view_batch) inside the TensorFlow graph, in one
    call per batch."""
    tf = tensorflow()
    shapes = view_shapes(channels, crop, size, scales)
    views = tf.numpy_function(
        functools.partial(eval_images.eval_view_batch, channels=channels, crop=crop,
                          resize_to=resize_size, size=size, scales=tuple(scales)),
        [encoded], [tf.uint8] * len(shapes), stateful=False)
    views = tf.nest.flatten(views)  # eager mode returns a lone output unlisted
    for view, shape in zip(views, shapes.values()):
        view.set_shape((None,) + shape)
    return dict(zip(shapes, views))


def center_view(encoded, channels: int, resize_size: int, size: int):
    """uint8 [size, size, channels] of one encoded image (a string scalar): shorter side to
    resize_size, centre crop (module docstring)."""
    tf = tensorflow()
    batch = eval_views(tf.reshape(encoded, [1]), channels, "center", resize_size, size, ())
    return batch["image"][0]


def _uniform_int(seed, low, high):
    """int32 scalar uniform in [low, high]."""
    tf = tensorflow()
    return tf.random.stateless_uniform([], seed, low, high + 1, dtype=tf.int32)


@dataclasses.dataclass(frozen=True)
class Preprocessor:
    """The host half of one pipeline's train and eval transforms (see the module docstring)."""

    image_size: int
    channels: int
    train_augment: str
    resize_size: int
    eval_crop: str
    eval_scales: tuple[int, ...]

    def augmentation(self) -> Augmentation:
        """The device half of the train augmentation (on_device.augment_pixels)."""
        if self.train_augment == "cifar":
            return Augmentation(pad=cifar_padding(self.image_size), flip=True)
        if self.train_augment == "none":
            return Augmentation()
        return Augmentation(flip=True, lighting=self.train_augment == "paper_imagenet"
                            and self.channels == 3)

    def center_view(self, encoded):
        return center_view(encoded, self.channels, self.resize_size, self.image_size)

    def resized_crop(self, encoded, seed):
        """float32 [S, S, C] on the 0-255 scale: the train crop before rounding (whole pixel values
        for `none`, and for cifar images that are already S x S); `seed` (int64 [2]) fixes it."""
        tf = tensorflow()
        if self.train_augment == "none":
            return tf.cast(self.center_view(encoded), tf.float32)
        if self.train_augment == "cifar":
            return self._cifar_resize(encoded)
        window = (self._paper_window if self.train_augment == "paper_imagenet"
                  else self._inception_window)
        image, _ = decode_window(encoded, lambda h, w: window(h, w, seed), self.channels)
        return tf.image.resize(image, [self.image_size, self.image_size], method="bilinear")

    def train(self, encoded, seed):
        """uint8 [S, S, C]: the train crop the host feeds (resized_crop, rounded)."""
        return to_pixels(self.resized_crop(encoded, seed))

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

    def _cifar_resize(self, encoded):
        """float32 [S, S, C]: the image, resized (antialiased bilinear) to S x S if it is not."""
        tf = tensorflow()
        size = self.image_size
        image = tf.cast(decode(encoded, self.channels), tf.float32)
        shape = tf.shape(image)
        image = tf.cond(tf.logical_and(tf.equal(shape[0], size), tf.equal(shape[1], size)),
                        lambda: image,
                        lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=True))
        image.set_shape([size, size, self.channels])
        return image

    def eval(self, encoded) -> dict:
        """The eval views of a batch of encoded images (string [N], N > 0; see the module
        docstring): {name: uint8 [N, *eval_shapes()[name]]}."""
        return eval_views(encoded, self.channels, self.eval_crop, self.resize_size,
                          self.image_size, self.eval_scales)

    def eval_shapes(self) -> dict[str, tuple[int, ...]]:
        """Per-example shape of each eval view."""
        return view_shapes(self.channels, self.eval_crop, self.image_size, self.eval_scales)
