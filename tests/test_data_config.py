"""config.data validation (field names in errors, missing datasets found without a download), split
resolution and host shares, and the lazy TensorFlow import."""

import subprocess
import sys
import time

import numpy as np
import pytest

from resnet_jax.config import base_config, validate_config
from resnet_jax.errors import ConfigError
from resnet_jax.data import HostSlice, splits
from resnet_jax.data.benchmark_files import write_image_folder
from resnet_jax.data.embedded import load_digits_pixels


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("images")), {"train": 6, "val": 3}, 2,
                              (20, 30), (20, 30))


def config_for(**data):
    c = base_config()
    c.data.update(data)
    return c


@pytest.mark.parametrize("field,value", [("train_augment", "mixup"), ("eval_crop", "five_crop"),
                                         ("normalization", "zca"), ("channels", 4),
                                         ("resize_size", 16), ("shuffle_buffer", 0),
                                         ("eval_scales", ())])
def test_bad_values_name_the_field(folder, field, value):
    with pytest.raises(ConfigError, match=f"config.data.{field}"):
        validate_config(config_for(dataset="folder", folder=folder, **{field: value}))


@pytest.mark.parametrize("field", ["num_classes", "num_train_examples", "num_eval_examples"])
def test_synthetic_sizes_must_be_positive(field):
    with pytest.raises(ConfigError, match=f"config.data.{field}=0 must be positive"):
        validate_config(config_for(dataset="synthetic", **{field: 0}))


def test_folder_defaults_validate_and_bad_splits_name_the_field(folder):
    validate_config(config_for(dataset="folder", folder=folder))  # eval split: "val"
    with pytest.raises(ConfigError, match="config.data.train_split='train\\[:100\\]'"):
        validate_config(config_for(dataset="folder", folder=folder, train_split="train[:100]"))
    with pytest.raises(ConfigError, match="config.data.eval_split='valid'"):
        validate_config(config_for(dataset="folder", folder=folder, eval_split="valid"))


def test_missing_folder_names_the_field(tmp_path):
    with pytest.raises(ConfigError, match="config.data.folder="):
        validate_config(config_for(dataset="folder", folder=str(tmp_path / "absent")))
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "train" / "a.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="holds images directly"):
        validate_config(config_for(dataset="folder", folder=str(tmp_path / "flat")))


@pytest.mark.parametrize("dataset,hint", [("cifar10", "resnet_jax.data.prepare --dataset cifar10"),
                                          ("imagenet2012", "ILSVRC2012_img_train.tar")])
def test_unprepared_tfds_dataset_says_how_to_prepare_without_downloading(tmp_path, dataset, hint):
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="config.data.data_dir") as error:
        validate_config(config_for(dataset=dataset, data_dir=str(tmp_path)))
    assert hint in str(error.value) and "docs/data.md" in str(error.value)
    assert time.perf_counter() - start < 20  # a download attempt retries for minutes
    assert not list(tmp_path.iterdir())  # nothing written, nothing fetched


def test_tfds_dataset_needs_a_known_name(tmp_path):
    with pytest.raises(ConfigError, match="config.data.tfds_name is not set"):
        validate_config(config_for(dataset="tfds", data_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="config.data.tfds_name='no_such_dataset'"):
        validate_config(config_for(dataset="tfds", tfds_name="no_such_dataset",
                                   data_dir=str(tmp_path)))


def test_split_specs_resolve_to_ranges():
    sizes = {"train": splits.SplitSize(50_000), "test": splits.SplitSize(10_000)}
    assert splits.resolve("train[:45000]", sizes) == [("train", 0, 45_000)]
    assert splits.resolve("train[45000:]", sizes) == [("train", 45_000, 50_000)]
    both = splits.resolve("train[-10:]+test[:10%]", sizes)
    assert both == [("train", 49_990, 50_000), ("test", 0, 1_000)]
    assert splits.count(both) == 1_010
    assert splits.take(both, 5, 20) == [("train", 49_995, 50_000), ("test", 0, 10)]
    assert splits.to_spec(splits.take(both, 5, 20)) == "train[49995:50000]+test[0:10]"
    with pytest.raises(ValueError):
        splits.resolve("validation", sizes)


def test_train_shares_are_disjoint_even_and_large_enough():
    for n, processes, batch in [(50_000, 3, 129), (10, 2, 4), (1_281_167, 8, 1024)]:
        shares = [splits.train_share(n, HostSlice(batch * processes, processes, i, processes))
                  for i in range(processes)]
        assert shares[0][0] == 0 and shares[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))
        steps = n // (batch * processes)
        assert min(stop - start for start, stop in shares) >= steps * batch


def test_importing_and_digits_import_neither_tensorflow_nor_scikit_learn():
    code = ("import sys\nfrom resnet_jax.config import base_config, validate_config\n"
            "from resnet_jax.data import HostSlice, build_pipeline\n"
            "c = base_config(); validate_config(c)\n"
            "next(build_pipeline(c.data, HostSlice(8, 8), 0).train_batches())\n"
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
            "assert 'sklearn' not in sys.modules, 'sklearn was imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_digits_read_from_scikit_learns_file_equal_load_digits():
    """embedded.py reads scikit-learn's digits file itself: a change of its place or format in a
    new scikit-learn fails here."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.RandomState(0).permutation(len(digits.target))
    for split, index in zip(load_digits_pixels(), (np.setdiff1d(order, order[::5]), order[::5])):
        assert split.images.shape == (len(index), 8, 8, 1) and split.images.dtype == np.uint8
        np.testing.assert_array_equal(split.images[..., 0], digits.images[index])
        np.testing.assert_array_equal(split.labels, digits.target[index])
