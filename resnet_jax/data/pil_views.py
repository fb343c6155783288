"""The eval views of one encoded image, computed by PIL as torchvision's eval transforms compute
them on PIL images: numpy out, no TensorFlow (tf.data calls `eval_view_batch` through
tf.numpy_function once per batch, preprocessing.eval_views).

- Resize(r): the shorter side to r, the longer to int(r * long / short), antialiased bilinear
  (PIL's fixed-point resampler, rounded to whole pixel values).
- CenterCrop(s): the window at (int(round((h - s) / 2)), int(round((w - s) / 2))) (half to even).

Why PIL rather than tf.image: PIL *is* torchvision's reference, and its decode plus a resample of
only the crop's box (`Image.resize(box=...)`, the whole image's scale and the crop's offset) takes
about half the CPU time of TensorFlow's windowed decode and ScaleAndTranslate (docs/performance.md).
A YCbCr or greyscale JPEG is decoded by simplejpeg instead of PIL's own loader: the same
libjpeg-turbo decode (accurate integer DCT, fancy upsampling) into a numpy array, the same pixels,
in about a fifth less CPU time (docs/performance.md). Every other file (CMYK and YCCK JPEGs, whose
RGB PIL computes its own way; PNG, GIF, ...) and any JPEG simplejpeg refuses (libjpeg's warnings
about damage are errors there) is PIL's, as before. Both release the GIL while they decode, and
PIL while it resamples, so tf.data's parallel map still spreads over the cores.
"""

import io

import numpy as np
import simplejpeg
from PIL import Image

MODES = {1: "L", 3: "RGB"}


# The JPEG colour spaces whose RGB simplejpeg computes as PIL does (decode_jpeg_header's names).
SIMPLEJPEG_COLOURSPACES = ("YCbCr", "Gray")


def open_image(encoded: bytes, channels: int) -> Image.Image:
    """The decoded image (the first frame of an animation) in mode L (channels 1) or RGB (3)."""
    if channels == 3 and simplejpeg.is_jpeg(encoded):
        try:
            if simplejpeg.decode_jpeg_header(encoded)[2] in SIMPLEJPEG_COLOURSPACES:
                return Image.fromarray(simplejpeg.decode_jpeg(encoded, colorspace="RGB"))
        except ValueError:
            pass  # a damaged file: PIL decodes what it can, as it did before simplejpeg
    image = Image.open(io.BytesIO(encoded))
    return image if image.mode == MODES[channels] else image.convert(MODES[channels])


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(size): the shorter side to `size`, the longer to
    int(size * long / short)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_offset(length: int, size: int) -> int:
    """torchvision's CenterCrop offset along a side of `length` pixels."""
    return int(round((length - size) / 2))


def as_array(image: Image.Image, channels: int) -> np.ndarray:
    """uint8 [H, W, channels]."""
    return np.asarray(image, np.uint8).reshape(image.height, image.width, channels)


def center_view(image: Image.Image, channels: int, resize: int, size: int) -> np.ndarray:
    """uint8 [size, size, channels]: Resize(resize) then CenterCrop(size), resampling only the
    crop's box of the source with the whole image's filter taps (PIL may run its two passes in the
    other order and rounds between them: within one grey level of the whole-image view when
    downscaling)."""
    new_h, new_w = resized_size(image.height, image.width, resize)
    top, left = center_offset(new_h, size), center_offset(new_w, size)
    if (new_h, new_w) == (image.height, image.width):
        return as_array(image.crop((left, top, left + size, top + size)), channels)
    sy, sx = image.height / new_h, image.width / new_w
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return as_array(image.resize((size, size), Image.BILINEAR, box=box), channels)


def ten_crop(image: Image.Image, channels: int, resize: int, size: int) -> np.ndarray:
    """uint8 [10, size, size, channels]: Resize(resize), then the four corner crops and the centre
    crop, then the same five mirrored (torchvision's TenCrop order)."""
    new_h, new_w = resized_size(image.height, image.width, resize)
    resized = as_array(image.resize((new_w, new_h), Image.BILINEAR), channels)
    top, left = center_offset(new_h, size), center_offset(new_w, size)
    bottom, right = new_h - size, new_w - size
    crops = [resized[y:y + size, x:x + size]
             for y, x in ((0, 0), (0, right), (bottom, 0), (bottom, right), (top, left))]
    crops += [c[:, ::-1] for c in crops]
    return np.stack(crops)


def eval_views(encoded: bytes, channels: int, crop: str, resize: int, size: int,
               scales: tuple[int, ...]) -> list[np.ndarray]:
    """The views of preprocessing's module docstring, in view_shapes' order: [center_view] for
    `center`, [ten_crop] for `ten_crop`, and for `multi_scale` one [2, s, s, channels] array per
    scale s (the centre view at Resize(s) and its mirror)."""
    image = open_image(encoded, channels)
    if crop == "center":
        return [center_view(image, channels, resize, size)]
    if crop == "ten_crop":
        return [ten_crop(image, channels, resize, size)]
    views = []
    for scale in scales:
        view = center_view(image, channels, scale, scale)
        views.append(np.stack([view, view[:, ::-1]]))
    return views


def eval_view_batch(encoded: np.ndarray, channels: int, crop: str, resize: int, size: int,
                    scales: tuple[int, ...]) -> list[np.ndarray]:
    """eval_views of each of a non-empty batch of encoded images (bytes [N]), stacked: one uint8
    [N, *view shape] array per view. tf.data calls this once per batch rather than once per image:
    a tf.numpy_function call per image cost about 1 ms of CPU on its own, as much as the image's
    decode and resample (docs/performance.md)."""
    per_image = [eval_views(e, channels, crop, resize, size, scales) for e in encoded]
    return [np.stack(views) for views in zip(*per_image)]
