"""The imagenet2012 and cifar10 code paths through TFDS, offline: tfds.testing.mock_data (random images,
random sizes for imagenet2012), and imagenet2012 prepared by its real TFDS builder from tiny archives in
manual_dir."""

import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from resnet_jax.config import base_config, validate_config
from resnet_jax.data import HostSlice, build_pipeline
from resnet_jax.data.benchmark_files import synthetic_image
from resnet_jax.data.on_device import Augmentation, DevicePipeline
from train_cli import REPO

MOCK_SPLITS = {"imagenet2012": {"train": 20, "validation": 10},
               "cifar10": {"train": 20, "test": 10}}


def write_metadata(name: str, data_dir: str) -> None:
    """dataset_info.json of `name` with MOCK_SPLITS sizes, so that mock_data knows the splits."""
    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=n * 100_000)
        for split, n in MOCK_SPLITS[name].items()]))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)


def config_for(dataset, data_dir, **data):
    c = base_config()
    c.global_batch_size, c.eval_batch_size = 8, 4
    c.data.update({"dataset": dataset, "data_dir": data_dir, "placement": "host", **data})
    return c


def first_batches(c):
    validate_config(c)
    pipeline = build_pipeline(c.data, HostSlice(c.global_batch_size, c.eval_batch_size), c.seed)
    return pipeline, next(pipeline.train_batches()), list(pipeline.eval_batches())


@pytest.mark.parametrize("augment,eval_crop,eval_shapes,shuffle_buffer", [
    ("paper_imagenet", "ten_crop", {"image": (10, 64, 64, 3)}, None),  # held in memory
    ("inception", "multi_scale", {"image_64": (2, 64, 64, 3), "image_96": (2, 96, 96, 3)}, 8),
])
def test_mock_imagenet2012(tmp_path, augment, eval_crop, eval_shapes, shuffle_buffer):
    write_metadata("imagenet2012", str(tmp_path))
    c = config_for("imagenet2012", str(tmp_path), image_size=64, train_augment=augment,
                   eval_crop=eval_crop, eval_scales=(64, 96), shuffle_buffer=shuffle_buffer)
    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
        pipeline, train, evals = first_batches(c)
    counts = (pipeline.num_classes, pipeline.num_train_examples, pipeline.num_eval_examples)
    assert counts == (1000, 20, 10)
    assert train["image"].shape == (8, 64, 64, 3) and np.isfinite(train["image"]).all()
    assert train["label"].dtype == np.int32 and train["label"].max() < 1000
    assert len(evals) == 3 and sum(b["mask"].sum() for b in evals) == 10
    for key, shape in eval_shapes.items():
        assert evals[0][key].shape == (4,) + shape


def test_mock_cifar10(tmp_path):
    write_metadata("cifar10", str(tmp_path))
    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
        pipeline, train, evals = first_batches(config_for("cifar10", str(tmp_path)))
    assert pipeline.preprocessor.train_augment == "cifar" and pipeline.preprocessor.resize_size == 32
    assert train["image"].shape == (8, 32, 32, 3) and train["label"].max() < 10
    assert [b["mask"].sum() for b in evals] == [4, 4, 2] and evals[0]["image"].shape == (4, 32, 32, 3)


@pytest.mark.parametrize("normalization", ["per_pixel_mean", "per_channel"])
def test_mock_cifar10_on_the_devices_matches_the_host_pipeline(tmp_path, normalization):
    write_metadata("cifar10", str(tmp_path))
    configs = [config_for("cifar10", str(tmp_path), placement=p, normalization=normalization)
               for p in ("host", "device")]
    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
        (host, _, host_evals), (device, train, evals) = map(first_batches, configs)
    assert isinstance(device, DevicePipeline) and device.augmentation == Augmentation(4, True)
    assert train["image"].shape == (8, 32, 32, 3) and train["label"].max() < 10
    assert len(evals) == len(host_evals) == 3
    for d, h in zip(evals, host_evals):
        real = h["mask"]
        assert np.array_equal(d["mask"], real) and np.array_equal(d["label"][real], h["label"][real])
        np.testing.assert_allclose(d["image"][real], h["image"][real], rtol=1e-6, atol=1e-6)


def tar_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def jpeg(rng):
    buffer = io.BytesIO()
    size = rng.integers(30, 70, 2)
    Image.fromarray(synthetic_image(rng, int(size[0]), int(size[1]))).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_imagenet2012_prepared_from_manual_archives(tmp_path):
    rng = np.random.default_rng(0)
    manual, data_dir = tmp_path / "manual", str(tmp_path / "tfds")
    manual.mkdir()
    with tarfile.open(manual / "ILSVRC2012_img_train.tar", "w") as train:
        for synset in ("n01440764", "n01443537"):  # classes 0 and 1
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as images:
                for i in range(6):
                    tar_member(images, f"{synset}_{i}.JPEG", jpeg(rng))
            tar_member(train, f"{synset}.tar", inner.getvalue())
    with tarfile.open(manual / "ILSVRC2012_img_val.tar", "w") as val:
        for i in range(1, 6):
            tar_member(val, f"ILSVRC2012_val_{i:08d}.JPEG", jpeg(rng))
    done = subprocess.run([sys.executable, "-m", "resnet_jax.data.prepare", "--dataset", "imagenet2012",
                           "--data_dir", data_dir, "--manual_dir", str(manual)],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "imagenet2012 prepared in" in done.stdout
    c = config_for("imagenet2012", data_dir, image_size=48, train_augment="paper_imagenet",
                   shuffle_buffer=4)  # streamed from the prepared files
    pipeline, train, evals = first_batches(c)
    assert (pipeline.num_train_examples, pipeline.num_eval_examples) == (12, 5)
    assert train["image"].shape == (8, 48, 48, 3) and set(train["label"]) <= {0, 1}
    assert [b["mask"].sum() for b in evals] == [4, 1] and evals[0]["image"].shape == (4, 48, 48, 3)
