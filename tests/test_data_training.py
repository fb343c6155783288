"""A short training run through the TFDS pipeline on a tiny prepared dataset of generated JPEGs."""

import os

import pytest

from resnet_jax.config import base_config
from resnet_jax.data.benchmark_files import store_folder_as_tfds, write_image_folder
from resnet_jax.training import train_and_evaluate
from train_cli import MODEL


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    """A prepared TFDS dataset "tiny_train_jpegs": 20 train and 11 test JPEGs of 3 classes."""
    root = tmp_path_factory.mktemp("tiny_train_jpegs")
    folder = write_image_folder(str(root / "images"), {"train": 20, "test": 11}, 3, (36, 60),
                                (36, 60))
    store_folder_as_tfds(folder, "tiny_train_jpegs", str(root / "tfds"))
    return str(root / "tfds")


@pytest.mark.parametrize("placement", ["host", "device"])
def test_train_and_evaluate_on_a_tiny_tfds_dataset(tfds_dir, tmp_path, placement):
    c = base_config()
    c.model.name = MODEL
    c.data.update({"dataset": "tfds", "tfds_name": "tiny_train_jpegs", "data_dir": tfds_dir,
                   "image_size": 32, "train_augment": "cifar", "placement": placement})
    c.global_batch_size = c.eval_batch_size = 8
    c.schedule.update({"unit": "steps", "length": 4.0, "boundaries": (2.0,)})
    c.eval_every_steps = 4  # one eval, at the end
    c.tensorboard = False
    result = train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 4
    assert result["eval"]["count"] == 11
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "4")
