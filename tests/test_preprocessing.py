"""Eval views and train augmentations against the exact pixel windows they should take: the host
half (uint8 crops and views, preprocessing.py) and the device half of the train augmentation
(on_device.augment_pixels) over a batch of host crops.

Images are PNG (lossless) and already have the shorter side of the view, so a window is compared
bit for bit with a numpy slice of the image.
"""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import eval_images, on_device, preprocessing
from resnet_jax.data.benchmark_files import synthetic_image
from resnet_jax.data.preprocessing import Preprocessor
from resnet_jax.data.tf_runtime import tensorflow

MEAN = np.array([100.0, 120.0, 140.0], np.float32)
STD = np.array([50.0, 60.0, 70.0], np.float32)


def png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)


def preprocessor(size=8, resize=10, eval_crop="ten_crop", scales=(8,), augment="none", channels=3):
    return Preprocessor(size, channels, augment, resize, eval_crop, scales)


def eval_one(pre, encoded) -> dict:
    """{name: uint8 numpy view} of one encoded image, through `pre`'s batch eval."""
    return {name: view.numpy()[0] for name, view in pre.eval([encoded]).items()}


def device_half(pre, crops, mean=MEAN, std=STD, key=0):
    """float32 [N, S, S, C]: the device half of `pre`'s train augmentation over host crops [N, S, S,
    C], with jax.random.key(`key`)."""
    return np.asarray(on_device.augment_pixels(jnp.asarray(np.stack(crops)), mean, std,
                                               jax.random.key(key), pre.augmentation()))


def train_crops(pre, encoded, n, seed=0):
    """uint8 host crops of `encoded` for n example seeds."""
    crops = [pre.train(encoded, np.array([seed, i], np.int64)).numpy() for i in range(n)]
    assert all(c.dtype == np.uint8 for c in crops)
    return crops


@pytest.mark.parametrize("height,width", [(10, 15), (16, 10)])
def test_ten_crop_takes_the_four_corners_the_centre_and_their_mirrors(height, width):
    """The views are, in order: top-left, top-right, bottom-left, bottom-right, centre (offsets
    rounded half to even, as torchvision's CenterCrop), then each of the five mirrored left-right.
    (torchvision's TenCrop crops the mirrored image instead: the same corner windows in the order
    mirror(top-right), mirror(top-left), ...; the eval averages over views, so order is immaterial.)
    """
    image = random_image(height, width)
    views = eval_one(preprocessor(8, 10), png(image))["image"]
    assert views.dtype == np.uint8
    h, w = height - 8, width - 8
    top, left = int(round(h / 2)), int(round(w / 2))
    windows = [image[:8, :8], image[:8, w:], image[h:, :8], image[h:, w:],
               image[top:top + 8, left:left + 8]]
    windows += [window[:, ::-1] for window in windows]
    assert views.shape == (10, 8, 8, 3)
    for i, window in enumerate(windows):
        np.testing.assert_array_equal(views[i], window, err_msg=f"crop {i}")


def test_multi_scale_takes_a_centre_square_and_its_mirror_at_each_scale():
    """Shorter side to each scale s, then the centre s x s square and its mirror. The 12 x 20 image
    already has shorter side 12 (exact windows); at 8 it is resized as torchvision's Resize on a PIL
    image (antialiased bilinear; within one grey level)."""
    image = random_image(12, 20, seed=1)
    views = eval_one(preprocessor(8, 10, "multi_scale", (12, 8)), png(image))
    assert sorted(views) == ["image_12", "image_8"]
    exact = views["image_12"]
    window = image[:, 4:16]
    np.testing.assert_array_equal(exact[0], window)
    np.testing.assert_array_equal(exact[1], window[:, ::-1])
    resized = np.asarray(Image.fromarray(image).resize((int(8 * 20 / 12), 8), Image.BILINEAR))
    assert resized.shape == (8, 13, 3)
    window = resized[:, 2:10]  # round((13 - 8) / 2) = 2, half to even
    small = views["image_8"].astype(np.float32)
    assert np.abs(small[0] - window).max() <= 1
    assert np.abs(small[1] - window[:, ::-1]).max() <= 1
    assert preprocessor(8, 10, "multi_scale", (12, 8)).eval_shapes() == {
        "image_12": (2, 12, 12, 3), "image_8": (2, 8, 8, 3)}


@pytest.mark.parametrize("height,width,resize", [(10, 13, 10), (13, 10, 10), (20, 30, 10),
                                                 (30, 20, 10), (11, 11, 10)])
def test_center_view_resizes_the_shorter_side_like_torchvision(height, width, resize):
    image = random_image(height, width, seed=2)
    short = min(height, width)
    size = (int(resize * width / short), resize) if height <= width else (
        resize, int(resize * height / short))
    resized = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)).astype(np.float32)
    top, left = (int(round((d - 8) / 2)) for d in resized.shape[:2])
    reference = resized[top:top + 8, left:left + 8]
    view = eval_one(preprocessor(8, resize, "center"), png(image))["image"]
    assert view.dtype == np.uint8 and np.abs(view - reference).max() <= 1
    assert preprocessor(8, resize, "center").eval_shapes() == {"image": (8, 8, 3)}


@pytest.mark.parametrize("crop", ["center", "ten_crop", "multi_scale"])
def test_eval_views_of_a_batch_are_each_images_own(crop):
    """One numpy_function call per batch (eval_images.eval_view_batch): images of different sizes
    and orientations keep their own views, in order."""
    images = [random_image(h, w, seed=h) for h, w in ((12, 17), (19, 11), (10, 10))]
    pre = preprocessor(8, 10, crop, (12, 8))
    batch = {name: view.numpy() for name, view in pre.eval([png(i) for i in images]).items()}
    assert {name: v.shape for name, v in batch.items()} == {
        name: (3,) + shape for name, shape in pre.eval_shapes().items()}
    for i, image in enumerate(images):
        for name, view in eval_one(pre, png(image)).items():
            np.testing.assert_array_equal(batch[name][i], view)
    first = next(iter(batch.values()))
    assert not np.array_equal(first[0], first[1])


def test_ten_crop_eval_shapes():
    assert preprocessor(8, 10).eval_shapes() == {"image": (10, 8, 8, 3)}


def test_train_without_augmentation_is_the_normalised_centre_view():
    image = random_image(10, 14, seed=3)
    pre = preprocessor(8, 10)
    out = pre.train(png(image), np.array([1, 2], np.int64)).numpy()
    np.testing.assert_array_equal(out, image[1:9, 3:11])
    normalised = (image[1:9, 3:11].astype(np.float64) - MEAN) / STD
    np.testing.assert_allclose(device_half(pre, [out])[0], normalised, rtol=1e-6)


def test_cifar_augmentation_pads_with_the_mean_and_crops_every_offset():
    """The host feeds the image; the devices normalise, pad size / 8 = 4 pixels of zeros (the mean),
    take a random 32 x 32 crop: all 9 x 9 offsets occur, and each crop is the padded image's window
    (or its mirror)."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    image = np.stack([rows * 7 + 20, cols * 7 + 20, np.full_like(rows, 9)], -1).astype(np.uint8)
    pre = preprocessor(32, 32, augment="cifar")
    padded = np.pad((image.astype(np.float32) - 9) / 0.5, ((4, 4), (4, 4), (0, 0)))
    host = pre.train(png(image), np.array([3, 0], np.int64)).numpy()
    np.testing.assert_array_equal(host, image)
    offsets, flips = set(), 0
    batch = device_half(pre, [host] * 300, np.full(3, 9.0, np.float32), np.full(3, 0.5, np.float32))
    for i, out in enumerate(batch):
        matches = [(y, x, flip) for y in range(9) for x in range(9) for flip in (False, True)
                   if np.array_equal(out[:, ::-1] if flip else out, padded[y:y + 32, x:x + 32])]
        assert len(matches) == 1, f"crop {i} is not a window of the padded image"
        offsets.add(matches[0][:2])
        flips += matches[0][2]
    assert len(offsets) >= 70
    assert {y for y, _ in offsets} == set(range(9)) and {x for _, x in offsets} == set(range(9))
    assert 100 <= flips <= 200


def test_paper_window_is_a_square_of_the_shorter_side_scaled_from_256_to_480():
    """He et al. 2015: shorter side resized to s in [256, 480], a 224 crop; in the image's own
    pixels, a square of side round(shorter * 224 / s), at a random position inside the image."""
    tf = tensorflow()
    pre = preprocessor(224, 256, augment="paper_imagenet")
    height, width = 480 * 224, 480 * 300  # large enough that every s gives its own side
    shorter = min(height, width)
    sides, ys, xs = set(), [], []
    window = tf.function(lambda seed: pre._paper_window(tf.constant(height), tf.constant(width), seed))
    for i in range(1500):
        y, x, h, w = (int(v) for v in window(tf.constant([5, i], tf.int64)))
        assert h == w and 0 <= y <= height - h and 0 <= x <= width - w
        sides.add(h)
        ys.append(y / (height - h))
        xs.append(x / (width - w))
    scales = {round(shorter * 224 / side) for side in sides}
    assert min(scales) == 256 and max(scales) == 480 and len(scales) > 200
    assert min(ys) < 0.05 and max(ys) > 0.95 and min(xs) < 0.05 and max(xs) > 0.95
    small = pre._paper_window(tf.constant(100), tf.constant(150), tf.constant([1, 1], tf.int64))
    assert 47 <= int(small[2]) <= 88  # round(100 * 224 / 480) .. round(100 * 224 / 256)


def test_uniform_int_covers_both_ends():
    tf = tensorflow()
    draws = {int(preprocessing._uniform_int(tf.constant([0, i], tf.int64), 3, 6)) for i in range(200)}
    assert draws == {3, 4, 5, 6}


def test_inception_window_area_and_aspect_ranges():
    tf = tensorflow()
    pre = preprocessor(8, 10, augment="inception")
    height, width = 400, 600
    areas, aspects, ys, xs = [], [], [], []
    for i in range(300):
        y, x, h, w = (int(v) for v in pre._inception_window(tf.constant(height), tf.constant(width),
                                                            tf.constant([2, i], tf.int64)))
        assert 0 <= y <= height - h and 0 <= x <= width - w
        areas.append(h * w / (height * width))
        ys.append(y)
        xs.append(x)
        aspects.append(w / h)
    assert len({y for y in ys}) > 50 and len({x for x in xs}) > 50
    assert sum(x != y for x, y in zip(xs, ys)) > 250  # independent offsets on the two axes
    assert 0.08 - 0.01 <= min(areas) < 0.2 and max(areas) > 0.6 and max(areas) <= 1.0
    assert 3 / 4 - 0.02 <= min(aspects) < 0.85 and 1.2 < max(aspects) <= 4 / 3 + 0.02


def test_inception_window_makes_ten_attempts_then_takes_the_whole_image():
    """10 attempts (as torchvision's RandomResizedCrop), then the whole image. On a 50 x 800 strip a
    window of 8 % of the area (3200 pixels) fits only at full height with round(50 r) >= 64 columns,
    i.e. aspect r >= 1.27; TensorFlow's sampler draws r uniformly in [3/4, 4/3], so an attempt
    succeeds with p = (4/3 - 1.27) / (4/3 - 3/4) = 0.109 and all ten fail with (1 - p)^10 = 0.317
    (9 attempts: 0.355, 11: 0.282). Over 40,000 seeds the rate's standard deviation is 0.0023."""
    tf = tensorflow()
    pre = preprocessor(8, 10, augment="inception")
    height, width = 50, 800
    seeds = tf.constant(np.stack([np.full(40_000, 9), np.arange(40_000)], 1), tf.int64)
    windows = tf.function(lambda seeds: tf.map_fn(
        lambda seed: tf.stack(pre._inception_window(tf.constant(height), tf.constant(width), seed)),
        seeds, fn_output_signature=tf.int32))(seeds).numpy()
    whole = np.all(windows == [0, 0, height, width], axis=1)
    crops = windows[~whole]
    assert np.all(crops[:, 2] == height) and crops[:, 3].min() >= 64 and crops[:, 3].max() <= 67
    p = (4 / 3 - 63.5 / height) / (4 / 3 - 3 / 4)
    assert whole.mean() == pytest.approx((1 - p) ** 10, abs=0.012)


def test_pca_noise_is_alexnet_lighting():
    """AlexNet's lighting noise: 255 * V (alpha * lambda), alpha ~ N(0, 0.1^2) per image, with the
    eigenvalues and (orthonormal) eigenvectors of ImageNet's RGB covariance (fb.resnet.torch)."""
    eigenvalues = np.array([0.2175, 0.0188, 0.0045])
    vectors = on_device.PCA_EIGENVECTORS.astype(np.float64)
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=2e-4)
    np.testing.assert_allclose(on_device.PCA_EIGENVALUES, eigenvalues, rtol=1e-6)
    key = jax.random.key(4)
    noise = np.asarray(on_device.lighting_noise(key, 3000), np.float64)
    drawn = 0.1 * np.asarray(jax.random.normal(key, (3000, 3)), np.float64)  # the alphas of this key
    np.testing.assert_allclose(noise, 255 * (drawn * eigenvalues) @ vectors.T, rtol=1e-4, atol=1e-3)
    alphas = np.linalg.solve(vectors, noise.T / 255).T / eigenvalues
    assert np.std(alphas, axis=0) == pytest.approx([0.1] * 3, rel=0.1)
    # On a flat image every pixel moves by its image's noise, before normalisation.
    pre = preprocessor(8, 10, augment="paper_imagenet")
    flat = np.full((4, 2, 2, 3), 100, np.uint8)
    out = np.asarray(on_device.augment_pixels(jnp.asarray(flat), 0.0, 1.0, key, pre.augmentation()))
    expected = 100 + np.asarray(on_device.lighting_noise(
        jax.random.fold_in(key, on_device.LIGHTING_STREAM), 4))
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape), rtol=1e-6)


@pytest.mark.parametrize("augment", ["paper_imagenet", "inception", "cifar"])
def test_train_output_of_a_flat_image_is_its_normalised_colour(augment):
    """A one-colour image stays that colour through crops, resizes and flips; paper_imagenet adds
    its lighting noise (3 channels only), so a 1-channel image checks the rest exactly."""
    grey = np.full((40, 48), 77, np.uint8)
    pre = preprocessor(16, 18, augment=augment, channels=1)
    host = pre.train(png(grey), np.array([6, 1], np.int64)).numpy()
    assert host.shape == (16, 16, 1) and np.all(host == 77)
    out = device_half(pre, [host], np.array([50.0], np.float32), np.array([3.0], np.float32))[0]
    if augment == "cifar":  # crops may take padding (zeros, the normalised mean)
        assert set(np.unique(np.round(out, 4))) <= {0.0, 9.0} and np.isclose(out, 9.0).mean() > 0.5
    else:
        np.testing.assert_allclose(out, 9.0, rtol=1e-5)
    if augment == "paper_imagenet":  # with 3 channels: one colour, shifted by the lighting noise
        colour = np.full((40, 48, 3), 77, np.uint8)
        pre3 = preprocessor(16, 18, augment=augment)
        host = pre3.train(png(colour), np.array([6, 1], np.int64)).numpy()
        pixels = device_half(pre3, [host], np.full(3, 50.0, np.float32),
                             np.full(3, 3.0, np.float32)).reshape(-1, 3)
        assert np.all(pixels == pixels[0]) and np.abs(pixels[0] - 9.0).max() > 1e-3


def jpeg(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.mark.parametrize("encode", [jpeg, png])
def test_decode_window_is_the_window_of_the_decoded_image(encode):
    """Train crops decode only their window (for JPEG, decode_and_crop_jpeg): the same pixels as
    decoding the whole image and slicing it."""
    encoded = encode(random_image(30, 44, seed=5))
    whole = preprocessing.decode(encoded, 3).numpy()
    assert whole.shape == (30, 44, 3)
    window, shape = preprocessing.decode_window(encoded, lambda h, w: (3, 5, h - 10, w - 20), 3)
    np.testing.assert_array_equal(window.numpy(), whole[3:23, 5:29])
    assert tuple(shape.numpy()) == (30, 44)


@pytest.mark.parametrize("height,width", [(96, 96), (48, 32), (32, 48)])
def test_cifar_augmentation_resizes_other_sizes_with_antialiasing(height, width):
    """An image of another size under the cifar augmentation is first resized (both sides) to
    32 x 32 as PIL's antialiased bilinear resize does (within one grey level), on the host."""
    image = random_image(height, width, seed=6)
    pre = preprocessor(32, 32, augment="cifar")
    reference = np.asarray(Image.fromarray(image).resize((32, 32), Image.BILINEAR), np.float32)
    out = pre.train(png(image), np.array([0, 0], np.int64)).numpy()
    assert np.abs(out - reference).max() <= 1


def test_preprocessor_is_immutable():
    import dataclasses
    with pytest.raises(dataclasses.FrozenInstanceError):
        preprocessor().image_size = 4


def test_decode_takes_the_first_frame_of_an_animated_gif():
    frames = [Image.fromarray(np.full((6, 7, 3), v, np.uint8)) for v in (40, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    image = preprocessing.decode(buffer.getvalue(), 3).numpy()
    assert image.shape == (6, 7, 3) and abs(int(image.mean()) - 40) <= 2


def test_eval_views_of_a_gif_a_grey_and_an_rgba_image():
    """PIL's decoding for the eval views: an animated GIF's first frame; a grey image as three equal
    channels, and a colour one as one channel (ITU-R 601 luma); RGBA without its alpha."""
    frames = [Image.fromarray(np.full((6, 7, 3), v, np.uint8)) for v in (40, 200)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    view = eval_one(preprocessor(6, 6, "center"), buffer.getvalue())["image"]
    assert view.shape == (6, 6, 3) and abs(int(view.mean()) - 40) <= 2
    grey = random_image(6, 7)[..., 0]
    view = eval_one(preprocessor(6, 6, "center"), png(grey))["image"]
    np.testing.assert_array_equal(view, np.repeat(grey[:, :6, None], 3, axis=2))
    colour = np.zeros((6, 6, 3), np.uint8)
    colour[..., 1] = 200
    view = eval_one(preprocessor(6, 6, "center", channels=1), png(colour))["image"]
    assert view.shape == (6, 6, 1) and np.all(view == round(200 * 0.587))
    rgba = np.dstack([random_image(6, 6, seed=3), np.full((6, 6), 7, np.uint8)])
    view = eval_one(preprocessor(6, 6, "center"), png(rgba))["image"]
    np.testing.assert_array_equal(view, rgba[..., :3])


def test_eval_decoding_is_pils_whichever_decoder_runs(monkeypatch):
    """eval_images.decode hands a YCbCr or greyscale JPEG to simplejpeg and everything else to
    PIL: the pixels are PIL's either way (the same libjpeg-turbo decode: within one grey level,
    equal in practice); a CMYK JPEG (whose RGB simplejpeg computes otherwise) and a JPEG libjpeg
    warns about (an error for simplejpeg) are PIL's exactly."""
    decoded = []  # the images simplejpeg returned
    decode_jpeg = eval_images.simplejpeg.decode_jpeg
    monkeypatch.setattr(eval_images.simplejpeg, "decode_jpeg",
                        lambda *a, **k: decoded.append(decode_jpeg(*a, **k)) or decoded[-1])
    image = synthetic_image(np.random.default_rng(9), 37, 51)
    cmyk = io.BytesIO()
    Image.fromarray(np.dstack([image, image[..., :1]]), "CMYK").save(cmyk, format="JPEG")
    plain = jpeg(image)
    scan = plain.index(b"\xff\xda")
    warned = plain[:scan] + b"\x00\x00" + plain[scan:]  # "2 extraneous bytes before marker 0xda"
    for encoded, simplejpeg_decodes in ((plain, True), (jpeg(image[..., 0]), True),
                                        (cmyk.getvalue(), False), (warned, False)):
        decoded.clear()
        ours = eval_images.decode(encoded, 3).astype(np.int32)
        pils = np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), np.int32)
        assert ours.shape == pils.shape == (37, 51, 3)
        assert len(decoded) == simplejpeg_decodes
        if simplejpeg_decodes:
            assert np.abs(ours - pils).max() <= 1
        else:
            np.testing.assert_array_equal(ours, pils)


@pytest.mark.parametrize("size,pad", [(56, 7), (6, 1)])
def test_cifar_padding_is_an_eighth_of_the_crop_size(size, pad):
    """The padding is size / 8 pixels (at least 1): the widest strip of padding a crop shows."""
    pre = preprocessor(size, size, augment="cifar")
    host = pre.train(png(np.full((size, size, 3), 200, np.uint8)), np.array([8, 0], np.int64))
    widest = 0
    for out in device_half(pre, [host.numpy()] * 60, np.zeros(3, np.float32),
                           np.ones(3, np.float32))[..., 0]:
        rows, cols = np.flatnonzero(out.any(1)), np.flatnonzero(out.any(0))
        widest = max(widest, rows[0], size - 1 - rows[-1], cols[0], size - 1 - cols[-1])
    assert widest == pad


def test_paper_crops_are_square_in_the_image_and_inception_crops_are_not():
    """Train crops of an image whose red channel is the column and green the row: a paper crop is a
    square of the image (equal spans of red and green in the output), an inception crop has a
    random aspect ratio."""
    y, x = np.mgrid[:200, :200]
    encoded = png(np.stack([x, y, np.zeros_like(x)], -1).astype(np.uint8))

    def spans(augment):
        out = train_crops(preprocessor(8, 8, augment=augment), encoded, 20, seed=9)
        return np.array([[np.ptp(o[..., 0]), np.ptp(o[..., 1])] for o in out], np.float32)

    paper = spans("paper_imagenet")
    np.testing.assert_allclose(paper[:, 0], paper[:, 1], atol=1e-3)
    inception = spans("inception")
    assert np.abs(inception[:, 0] - inception[:, 1]).max() > 5


def test_resize_keeps_black_and_white_pixels_at_0_and_255():
    """Rounded antialiased resizing of a black-and-white image keeps both ends of the range: 20 x 30
    -> 10 x 15, whose columns 0-4 are white and 10-14 black; the centre 10 x 10 crop starts at
    column 2."""
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, :15] = 255
    view = eval_one(preprocessor(8, 10, "multi_scale", (10,)), png(image))["image_10"][0]
    np.testing.assert_array_equal(view[:, :3], 255)
    np.testing.assert_array_equal(view[:, -2:], 0)


def test_paper_window_of_a_one_pixel_high_image_is_one_pixel():
    """The window side is at least one pixel, even where the scaled side rounds to 0
    (shorter side 1, resized to more than 448 at crop 224)."""
    tf = tensorflow()
    pre = preprocessor(224, 256, augment="paper_imagenet")
    window = tf.function(lambda seed: pre._paper_window(tf.constant(1), tf.constant(7), seed))
    xs = set()
    for i in range(60):
        y, x, h, w = (int(v) for v in window(tf.constant([6, i], tf.int64)))
        assert (y, h, w) == (0, 1, 1)
        xs.add(x)
    assert xs == set(range(7))  # every offset, both ends included


@pytest.mark.parametrize("augment", ["inception", "paper_imagenet", "cifar"])
def test_uint8_crops_are_the_float_crops_rounded(augment):
    """The host feeds the resized crop rounded to uint8 where it fed the float crop: each pixel
    moves by at most 0.5 grey levels (so by 0.5 / std once normalised), about 0.25 on average."""
    rng = np.random.default_rng(7)
    pre = preprocessor(24, 28, augment=augment)
    differences = []
    for i in range(6):
        image = synthetic_image(rng, int(rng.integers(40, 70)), int(rng.integers(40, 70)))
        encoded = jpeg(image)
        seed = np.array([2, i], np.int64)
        fed, exact = pre.train(encoded, seed).numpy(), pre.resized_crop(encoded, seed).numpy()
        assert fed.dtype == np.uint8 and exact.dtype == np.float32
        differences.append(np.abs(fed - exact).ravel())
        # The device half of each, with the same draws (flip, lighting noise, cifar's crop).
        ours, theirs = (device_half(pre, [crop], key=i)[0] for crop in (fed, exact))
        assert np.abs(ours - theirs).max() <= 0.5 / STD.min() + 1e-5
    differences = np.concatenate(differences)
    assert differences.max() <= 0.5 + 1e-4
    assert 0.1 < differences.mean() < 0.4 or augment == "cifar"


def test_center_view_resamples_the_crop_box_as_the_whole_image_would_be():
    """The centre view resamples only the crop's box of the source, with the whole image's scale:
    it is torchvision's eval transform (PIL's whole-image Resize, then CenterCrop) within one grey
    level when downscaling, as often up as down (fast_image_resize's fixed-point precision is not
    PIL's: about a fifth of the values move; with PIL's own box resample, a few per cent at
    most)."""
    rng = np.random.default_rng(8)
    differences = []
    for height, width in [(90, 131), (131, 90), (70, 70), (100, 101), (57, 200)]:
        encoded = jpeg(synthetic_image(rng, height, width))
        decoded = Image.open(io.BytesIO(encoded))
        for resize, size in ((56, 56), (37, 32), (48, 48), (50, 40)):
            view = preprocessing.center_view(encoded, 3, resize, size).numpy()
            short = min(height, width)
            new_h, new_w = (resize * height // short, resize * width // short)
            whole = np.asarray(decoded.resize((new_w, new_h), Image.BILINEAR))
            top, left = int(round((new_h - size) / 2)), int(round((new_w - size) / 2))
            whole = whole[top:top + size, left:left + size]
            assert view.shape == (size, size, 3) and view.dtype == np.uint8
            differences.append((view.astype(np.int32) - whole.astype(np.int32)).ravel())
    differences = np.concatenate(differences)
    assert np.abs(differences).max() <= 1 and abs(differences.mean()) < 0.02
    assert (differences != 0).mean() < 0.3


@pytest.mark.parametrize("crop", ["center", "ten_crop", "multi_scale"])
@pytest.mark.parametrize("channels", [1, 3])
def test_eval_views_are_the_same_whichever_resampler_runs(monkeypatch, crop, channels):
    """Where cykooz_resizer has no wheel (Linux on Arm) PIL resamples the eval views: every view
    of both, downscaled and upscaled, within one grey level of the other's."""
    pytest.importorskip("cykooz_resizer")
    rng = np.random.default_rng(10)
    pre = preprocessor(24, 28, crop, (20, 40), channels=channels)
    pil_resize, pil_calls = Image.Image.resize, []
    for height, width in [(61, 47), (30, 52)]:
        encoded = jpeg(synthetic_image(rng, height, width))
        fast = eval_one(pre, encoded)
        assert not pil_calls
        monkeypatch.setattr(eval_images, "cykooz_resizer", None)
        monkeypatch.setattr(Image.Image, "resize",
                            lambda *a, **k: pil_calls.append(1) or pil_resize(*a, **k))
        pils = eval_one(pre, encoded)
        monkeypatch.undo()
        assert pil_calls and fast.keys() == pils.keys()
        pil_calls.clear()
        for name in fast:
            difference = np.abs(fast[name].astype(np.int32) - pils[name])
            assert difference.max() <= 1 and (difference > 0).mean() < 0.3
