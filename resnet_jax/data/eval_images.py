"""The eval views of one encoded image, placed as torchvision's eval transforms place them on PIL
images and resampled with the same antialiased bilinear filter: numpy out, no TensorFlow (tf.data
calls `eval_view_batch` through tf.numpy_function once per batch, preprocessing.eval_views).

- Resize(r): the shorter side to r, the longer to int(r * long / short), antialiased bilinear
  (a fixed-point resampler, rounded to whole pixel values).
- CenterCrop(s): the window at (int(round((h - s) / 2)), int(round((w - s) / 2))) (half to even).

Decoding: a YCbCr or greyscale JPEG goes to simplejpeg (libjpeg-turbo's accurate integer DCT and
fancy upsampling, PIL's pixels into a numpy array, a fifth less CPU than PIL's loader); every other
file (CMYK and YCCK JPEGs, whose RGB PIL computes its own way; PNG, GIF, ...) and any JPEG
simplejpeg refuses (libjpeg's warnings about damage are errors there) goes to PIL.

Resampling: fast_image_resize (through cykooz_resizer), a SIMD implementation of PIL's convolution
resampler: the same filter and support, a different fixed-point precision, so within one grey
level of PIL's (unbiased: +1 and -1 equally often, on about a fifth of the values), the same
whichever of AVX2, SSE4.1 or plain code runs, in a quarter of PIL's CPU time (docs/data.md). No
wheel is built for Linux on Arm: there (requirements.txt's marker) PIL resamples. Decoders and
both resamplers release the GIL, so tf.data's parallel map spreads over the cores.
"""

import io

import numpy as np
import simplejpeg
from PIL import Image

try:
    import cykooz_resizer
except ImportError:  # a platform without its wheel: PIL resamples
    cykooz_resizer = None

MODES = {1: "L", 3: "RGB"}

# The JPEG colour spaces whose RGB simplejpeg computes as PIL does (decode_jpeg_header's names).
SIMPLEJPEG_COLOURSPACES = ("YCbCr", "Gray")

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in source pixels


def decode(encoded: bytes, channels: int) -> np.ndarray:
    """uint8 [H, W, channels]: the decoded image (the first frame of an animation), greyscale for
    channels 1 (ITU-R 601 luma), RGB for 3."""
    if channels == 3 and simplejpeg.is_jpeg(encoded):
        try:
            if simplejpeg.decode_jpeg_header(encoded)[2] in SIMPLEJPEG_COLOURSPACES:
                return simplejpeg.decode_jpeg(encoded, colorspace="RGB")
        except ValueError:
            pass  # a damaged file: PIL decodes what it can
    image = Image.open(io.BytesIO(encoded))
    if image.mode != MODES[channels]:
        image = image.convert(MODES[channels])
    return np.asarray(image, np.uint8).reshape(image.height, image.width, channels)


def resize(pixels: np.ndarray, height: int, width: int, box: Box) -> np.ndarray:
    """uint8 [height, width, C] of uint8 [H, W, C] (C 1 or 3): the `box` of the source resampled
    to height x width with the antialiased bilinear filter of PIL's Image.resize(box=...), whose
    taps at the box's edges reach outside it as the whole image's resize would."""
    source_h, source_w, channels = pixels.shape
    if cykooz_resizer is None:
        image = Image.fromarray(pixels.reshape(source_h, source_w) if channels == 1 else pixels)
        resized = image.resize((width, height), Image.BILINEAR, box=box)
        return np.asarray(resized, np.uint8).reshape(height, width, channels)
    pixel_type = {1: cykooz_resizer.PixelType.U8, 3: cykooz_resizer.PixelType.U8x3}[channels]
    source = cykooz_resizer.ImageData(source_w, source_h, pixel_type, pixels.tobytes())
    resized = cykooz_resizer.ImageData(width, height, pixel_type)
    left, top, right, bottom = box
    options = cykooz_resizer.ResizeOptions(
        resize_alg=cykooz_resizer.ResizeAlg.convolution(cykooz_resizer.FilterType.bilinear),
        crop_box=cykooz_resizer.CropBox(left, top, right - left, bottom - top))
    # A Resizer per call (0.3 us): one shared by tf.data's threads would serialise them.
    cykooz_resizer.Resizer().resize(source, resized, options)
    return np.frombuffer(resized.get_buffer(), np.uint8).reshape(height, width, channels)


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """(height, width) after torchvision's Resize(size): the shorter side to `size`, the longer to
    int(size * long / short)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def center_offset(length: int, size: int) -> int:
    """torchvision's CenterCrop offset along a side of `length` pixels."""
    return int(round((length - size) / 2))


def center_view(pixels: np.ndarray, resize_to: int, size: int) -> np.ndarray:
    """uint8 [size, size, C] of uint8 [H, W, C]: Resize(resize_to) then CenterCrop(size),
    resampling only the crop's box of the source with the whole image's filter taps (within one
    grey level of the whole image's view when downscaling)."""
    height, width = pixels.shape[:2]
    new_h, new_w = resized_size(height, width, resize_to)
    top, left = center_offset(new_h, size), center_offset(new_w, size)
    if (new_h, new_w) == (height, width):
        return pixels[top:top + size, left:left + size]
    sy, sx = height / new_h, width / new_w
    return resize(pixels, size, size, (left * sx, top * sy, (left + size) * sx, (top + size) * sy))


def ten_crop(pixels: np.ndarray, resize_to: int, size: int) -> np.ndarray:
    """uint8 [10, size, size, C] of uint8 [H, W, C]: Resize(resize_to), then the four corner crops
    and the centre crop, then the same five mirrored (torchvision's TenCrop order)."""
    height, width = pixels.shape[:2]
    new_h, new_w = resized_size(height, width, resize_to)
    resized = resize(pixels, new_h, new_w, (0, 0, width, height))
    top, left = center_offset(new_h, size), center_offset(new_w, size)
    bottom, right = new_h - size, new_w - size
    crops = [resized[y:y + size, x:x + size]
             for y, x in ((0, 0), (0, right), (bottom, 0), (bottom, right), (top, left))]
    crops += [c[:, ::-1] for c in crops]
    return np.stack(crops)


def eval_views(encoded: bytes, channels: int, crop: str, resize_to: int, size: int,
               scales: tuple[int, ...]) -> list[np.ndarray]:
    """The views of preprocessing's module docstring, in view_shapes' order: [center_view] for
    `center`, [ten_crop] for `ten_crop`, and for `multi_scale` one [2, s, s, channels] array per
    scale s (the centre view at Resize(s) and its mirror)."""
    pixels = decode(encoded, channels)
    if crop == "center":
        return [center_view(pixels, resize_to, size)]
    if crop == "ten_crop":
        return [ten_crop(pixels, resize_to, size)]
    views = []
    for scale in scales:
        view = center_view(pixels, scale, scale)
        views.append(np.stack([view, view[:, ::-1]]))
    return views


def eval_view_batch(encoded: np.ndarray, channels: int, crop: str, resize_to: int, size: int,
                    scales: tuple[int, ...]) -> list[np.ndarray]:
    """eval_views of each of a non-empty batch of encoded images (bytes [N]), stacked: one uint8
    [N, *view shape] array per view. tf.data calls this once per batch rather than once per image:
    a tf.numpy_function call per image cost about 1 ms of CPU on its own, as much as the image's
    decode and resample (docs/performance.md)."""
    per_image = [eval_views(e, channels, crop, resize_to, size, scales) for e in encoded]
    return [np.stack(views) for views in zip(*per_image)]
