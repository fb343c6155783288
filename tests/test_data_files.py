"""File-backed pipelines on a tiny real dataset of generated JPEGs, as an image folder and as a
prepared TFDS dataset: shapes, value ranges, flips, torchvision-matching eval, per-process
disjointness, exact eval coverage with padding, and resume at the exact position."""

import io

import jax
import numpy as np
import pytest
from PIL import Image

from resnet_jax.config import base_config, validate_config
from resnet_jax.data import HostSlice, build_pipeline, plan_data
from resnet_jax.data.benchmark_files import store_folder_as_tfds, write_image_folder
from resnet_jax.data.on_device import (LIGHTING_STREAM, augment_pixels, crop_offsets_and_flips,
                                       lighting_noise)
from resnet_jax.data.preprocessing import Preprocessor
from resnet_jax.data.sources import FolderSource, InMemorySource, TFDSSource

TRAIN, EVAL = 26, 11  # split sizes: neither a multiple of the batch sizes below
TORCHVISION_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
TORCHVISION_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def dataset_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    folder = write_image_folder(str(root / "images"), {"train": TRAIN, "test": EVAL}, 3, (40, 80),
                                (40, 80))
    store_folder_as_tfds(folder, "tiny_jpegs", str(root / "tfds"))
    return {"folder": folder, "tfds": str(root / "tfds")}


# folder: image files; tfds: a small TFDS split, held in memory; tfds_stream: the same streamed from
# its files through a shuffle buffer, as ImageNet is.
SOURCES = {"folder": FolderSource, "tfds": InMemorySource, "tfds_stream": TFDSSource}


@pytest.fixture(params=sorted(SOURCES))
def source(request, dataset_dirs):
    return request.param


def make_config(source, dataset_dirs, **data):
    c = base_config()
    c.global_batch_size, c.eval_batch_size = 8, 4
    if source == "folder":
        c.data.update(dict(dataset="folder", folder=dataset_dirs["folder"]))
    else:
        c.data.update(dict(dataset="tfds", tfds_name="tiny_jpegs", data_dir=dataset_dirs["tfds"]))
    if source == "tfds_stream":
        c.data.shuffle_buffer = 8
    c.data.update({"image_size": 32, "normalization": "torchvision", "placement": "host", **data})
    validate_config(c)
    return c


def pipeline(c, process_index=0, process_count=1):
    hosts = HostSlice(c.global_batch_size, c.eval_batch_size, process_index, process_count)
    return build_pipeline(c.data, hosts, c.seed)


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


def example_id(image):
    return np.round(image, 4).tobytes()


@pytest.mark.parametrize("augment", ["paper_imagenet", "inception", "cifar", "none"])
def test_train_batches_shapes_and_ranges(source, dataset_dirs, augment):
    p = pipeline(make_config(source, dataset_dirs, train_augment=augment))
    assert type(p.train_source) is SOURCES[source]
    assert (p.num_classes, p.num_train_examples, p.num_eval_examples) == (3, TRAIN, EVAL)
    assert p.image_shape == (32, 32, 3) and p.steps_per_epoch == TRAIN // 8
    for batch in take(p.train_batches(), 2):
        assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and set(batch["label"]) <= {0, 1, 2}
        low, high = (0 - TORCHVISION_MEAN) / TORCHVISION_STD, (1 - TORCHVISION_MEAN) / TORCHVISION_STD
        margin = 0.5 if augment == "paper_imagenet" else 1e-4  # PCA colour noise leaves [0, 255]
        assert np.all(batch["image"] >= low - margin) and np.all(batch["image"] <= high + margin)
        assert batch["image"].std() > 0.1


def test_eval_views(dataset_dirs):
    ten = next(pipeline(make_config("folder", dataset_dirs, eval_crop="ten_crop")).eval_batches())
    assert ten["image"].shape == (4, 10, 32, 32, 3) and ten["mask"].all()
    np.testing.assert_array_equal(ten["image"][:, 5:], ten["image"][:, :5, :, ::-1])
    multi = next(pipeline(make_config("folder", dataset_dirs, eval_crop="multi_scale",
                                      eval_scales=(32, 48))).eval_batches())
    assert sorted(multi) == ["image_32", "image_48", "label", "mask"]
    assert multi["image_32"].shape == (4, 2, 32, 32, 3) and multi["image_48"].shape == (4, 2, 48, 48, 3)
    np.testing.assert_array_equal(multi["image_48"][:, 1], multi["image_48"][:, 0, :, ::-1])


def jpeg_bytes(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def preprocessor(augment, size=32, resize=37):
    return Preprocessor(size, 3, augment, resize, "center", (size,))


def test_torchvision_eval_matches_pil_resize_and_center_crop():
    """torchvision's eval transform on PIL images: Resize (PIL bilinear, antialiased), CenterCrop,
    ToTensor, Normalize with ImageNet mean/std."""
    image = np.random.default_rng(1).integers(0, 256, (90, 131, 3), np.uint8)
    encoded = jpeg_bytes(image)
    pil = Image.open(io.BytesIO(encoded)).convert("RGB")
    resized = pil.resize((int(64 * 131 / 90), 64), Image.BILINEAR)
    left, top = int(round((resized.width - 56) / 2.0)), int(round((resized.height - 56) / 2.0))
    reference = np.asarray(resized.crop((left, top, left + 56, top + 56)), np.float32) / 255
    reference = (reference - TORCHVISION_MEAN) / TORCHVISION_STD
    pixels = preprocessor("none", 56, 64).eval([encoded])["image"].numpy()[0]
    ours = (pixels / np.float32(255) - TORCHVISION_MEAN) / TORCHVISION_STD  # as the devices do
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= 1.01 / 255 / TORCHVISION_STD.min()  # one grey level


@pytest.mark.parametrize("augment", ["paper_imagenet", "inception", "cifar"])
def test_train_augmentations_flip_about_half_the_time(augment):
    ramp = np.tile(np.linspace(0, 255, 48, dtype=np.float32)[None, :, None], (40, 1, 3))
    encoded = jpeg_bytes(ramp.astype(np.uint8))
    pre = preprocessor(augment)
    crops = [pre.train(encoded, np.array([7, i], np.int64)).numpy() for i in range(40)]
    assert all(c.shape == (32, 32, 3) and c[:, :16].mean() < c[:, 16:].mean() for c in crops)
    images = np.asarray(augment_pixels(np.stack(crops), 0.0, 1.0, jax.random.key(7),
                                       pre.augmentation()))  # the flips are the devices'
    flipped = sum(image[:, :16].mean() > image[:, 16:].mean() for image in images)
    assert 8 <= flipped <= 32


def test_processes_read_disjoint_parts_of_each_epoch(source, dataset_dirs):
    """The host feeds (uint8 crops) decide which examples each process reads; what the step makes
    of a feed depends on the feed and the step only."""
    c = make_config(source, dataset_dirs, train_augment="none", eval_split="train")
    ids = [example_id(img) for batch in pipeline(c).eval_feed()
           for img, keep in zip(batch["image"], batch["mask"]) if keep]
    assert len(set(ids)) == TRAIN
    steps = TRAIN // 8
    single = take(pipeline(c).train_feed(), 2 * steps)
    hosts = [take(pipeline(c, i, 2).train_feed(), 2 * steps) for i in range(2)]
    for epoch in range(2):
        seen = [[example_id(img) for b in h[epoch * steps:(epoch + 1) * steps] for img in b["image"]]
                for h in hosts]
        assert len(seen[0]) == len(set(seen[0])) == steps * 4
        assert not set(seen[0]) & set(seen[1])
        assert set(seen[0]) | set(seen[1]) <= set(ids)
        if source == "tfds_stream":  # each process reads its half of the split
            assert set(seen[0]) <= set(ids[:TRAIN // 2]) and set(seen[1]) <= set(ids[TRAIN // 2:])
    if source != "tfds_stream":  # the global batch does not depend on the process count
        for step in range(2 * steps):
            joined = np.concatenate([hosts[0][step]["image"], hosts[1][step]["image"]])
            np.testing.assert_array_equal(joined, single[step]["image"])


# (2, 2): one process adds an all-padding batch; (8, 8): two processes have no examples at all.
@pytest.mark.parametrize("process_count,eval_batch_size", [(1, 4), (2, 2), (3, 6), (8, 8)])
@pytest.mark.parametrize("source", ["folder", "tfds"])  # eval reads tfds_stream as tfds
def test_eval_covers_the_split_exactly_once(source, dataset_dirs, process_count, eval_batch_size):
    c = make_config(source, dataset_dirs)  # the feeds: padding rows are zero pixels
    reference = [example_id(img) for b in pipeline(c).eval_feed()
                 for img, keep in zip(b["image"], b["mask"]) if keep]
    assert len(set(reference)) == EVAL
    c.global_batch_size = c.eval_batch_size = eval_batch_size  # divisible by the process count
    seen, batch_counts = [], []
    for i in range(process_count):
        batches = list(pipeline(c, i, process_count).eval_feed())
        batch_counts.append(len(batches))
        for b in batches:
            assert b["image"].shape == (eval_batch_size // process_count, 32, 32, 3)
            assert not b["image"][~b["mask"]].any()
            seen += [example_id(img) for img in b["image"][b["mask"]]]
    assert sorted(seen) == sorted(reference)
    expected = HostSlice(eval_batch_size, eval_batch_size, 0, process_count).num_eval_batches(EVAL)
    assert batch_counts == [expected] * process_count


def test_resume_continues_at_the_exact_position(source, dataset_dirs):
    """The host feeds of steps start, start + 1, ... (uint8 crops) are the uninterrupted run's;
    the step makes the same batch of the same feed at the same step."""
    p = pipeline(make_config(source, dataset_dirs, train_augment="inception"))
    uninterrupted = take(p.train_feed(0), 8)  # 3 steps per epoch: crosses two epoch ends
    for start in (1, 3, 5):
        for expected, got in zip(uninterrupted[start:], take(p.train_feed(start), 3)):
            np.testing.assert_array_equal(got["image"], expected["image"])
            np.testing.assert_array_equal(got["label"], expected["label"])
    rebuilt = pipeline(make_config(source, dataset_dirs, train_augment="inception"))
    again = take(rebuilt.train_feed(), 2)
    np.testing.assert_array_equal(again[1]["image"], uninterrupted[1]["image"])


def test_per_pixel_mean_and_measured_channel_statistics(dataset_dirs):
    c = make_config("folder", dataset_dirs, train_augment="cifar", normalization="per_pixel_mean")
    p = pipeline(c)
    assert p.mean.shape == (32, 32, 3) and p.std.shape == ()
    c.data.normalization = "per_channel"  # no published statistics for a folder: measured
    p = pipeline(c)
    assert p.mean.shape == (3,) and 50 < p.mean.mean() < 200
    views = np.concatenate([b["image"][b["mask"]] for b in pipeline(c).eval_batches()])
    assert abs(views.mean()) < 0.5


@pytest.mark.parametrize("augment", ["paper_imagenet", "inception", "cifar", "none"])
def test_the_host_feeds_uint8_and_the_step_normalises_and_augments(dataset_dirs, augment):
    """The feed is uint8, H * W * C bytes per image; the batch the step makes from it is numpy's
    normalisation by hand with the step's draws: flip (and for paper_imagenet the lighting noise)
    before normalising, or for cifar normalise, pad with zeros, crop and flip."""
    c = make_config("folder", dataset_dirs, train_augment=augment, normalization="per_pixel_mean")
    p = pipeline(c)
    assert p.train_feed_spec()["image"] == ((8, 32, 32, 3), np.dtype(np.uint8))
    assert p.plan().host_bytes_per_image == 32 * 32 * 3
    assert plan_data(c.data, p.hosts, c.seed).host_bytes_per_image == 32 * 32 * 3
    step = 4
    feed, batch = next(p.train_feed(step)), next(p.train_batches(step))
    assert feed["image"].dtype == np.uint8 and feed["image"].nbytes == 8 * 32 * 32 * 3
    np.testing.assert_array_equal(batch["label"], feed["label"])
    key = jax.random.fold_in(jax.random.key(c.seed), step)
    offsets, flips = map(np.asarray, crop_offsets_and_flips(key, 8, p.augmentation))
    pixels, mean, std = feed["image"].astype(np.float64), p.mean, p.std
    flip = (augment != "none") & flips
    if augment == "cifar":
        padded = np.pad((pixels - mean) / std, ((0, 0), (4, 4), (4, 4), (0, 0)))
        expected = np.stack([padded[i, y:y + 32, x:x + 32] for i, (y, x) in enumerate(offsets)])
        expected[flip] = expected[flip][:, :, ::-1]
    else:
        pixels[flip] = pixels[flip][:, :, ::-1]
        if augment == "paper_imagenet":
            lighting_key = jax.random.fold_in(key, LIGHTING_STREAM)
            pixels += np.asarray(lighting_noise(lighting_key, 8))[:, None, None]
        expected = (pixels - mean) / std
    assert 0 < flip.sum() < 8 or augment == "none"
    np.testing.assert_allclose(batch["image"], expected, rtol=1e-5, atol=1e-5)
    feed, batch = next(p.eval_feed()), next(p.eval_batches())
    assert feed["image"].dtype == np.uint8
    np.testing.assert_allclose(batch["image"], (feed["image"] - mean) / std, rtol=1e-5, atol=1e-5)


def test_host_bytes_per_image_of_each_placement(dataset_dirs):
    c = make_config("folder", dataset_dirs, train_augment="cifar", placement="auto")
    hosts = HostSlice(8, 4)
    assert plan_data(c.data, hosts, c.seed).host_bytes_per_image == 0  # on the devices
    digits = base_config()
    digits.data.placement = "host"
    assert plan_data(digits.data, hosts, 0).host_bytes_per_image == 8 * 8 * 4  # float32
