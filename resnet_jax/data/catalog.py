"""What the project knows about each file-backed dataset: TFDS name, default splits and augmentation,
published channel statistics, and how to prepare it when it is missing."""

import dataclasses
from typing import Optional

# Published channel (mean, std) of the train splits, RGB, on the 0-1 scale.
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CIFAR10_MEAN_STD = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_MEAN_STD = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

TRAIN_AUGMENTS = ("paper_imagenet", "inception", "cifar", "none")
EVAL_CROPS = ("center", "ten_crop", "multi_scale")
NORMALIZATIONS = ("per_channel", "per_pixel_mean", "torchvision")

# Eval-split names tried in order when config.data.eval_split is None (tfds and folder datasets).
EVAL_SPLIT_CANDIDATES = ("validation", "val", "test")


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    tfds_name: Optional[str]  # None: from config.data.tfds_name, or a folder
    train_split: str
    eval_split: Optional[str]  # None: the first of EVAL_SPLIT_CANDIDATES the dataset has
    train_augment: str
    mean_std: Optional[tuple]  # 0-1 scale; None: measured on the train split
    # The published class count and split sizes, for planning a run (--dry_run) before the dataset
    # is prepared; None where they depend on the data.
    num_classes: Optional[int] = None
    split_sizes: Optional[dict] = None


DATASETS = {
    "cifar10": DatasetEntry("cifar10", "train", "test", "cifar", CIFAR10_MEAN_STD, 10,
                            {"train": 50_000, "test": 10_000}),
    "cifar100": DatasetEntry("cifar100", "train", "test", "cifar", CIFAR100_MEAN_STD, 100,
                             {"train": 50_000, "test": 10_000}),
    "imagenet2012": DatasetEntry("imagenet2012", "train", "validation", "inception",
                                 IMAGENET_MEAN_STD, 1000,
                                 {"train": 1_281_167, "validation": 50_000}),
    "tfds": DatasetEntry(None, "train", None, "inception", None),
    "folder": DatasetEntry(None, "train", None, "inception", None),
}


def tfds_name(data_config) -> str:
    return DATASETS[data_config.dataset].tfds_name or data_config.tfds_name


def train_augment(data_config) -> str:
    return data_config.train_augment or DATASETS[data_config.dataset].train_augment


def resize_size(data_config) -> int:
    """Shorter side before the eval centre crop: the image size itself for CIFAR-style data (no
    margin), else image_size / 0.875 (256 for 224)."""
    if data_config.resize_size:
        return data_config.resize_size
    if train_augment(data_config) == "cifar":
        return data_config.image_size
    return round(data_config.image_size * 256 / 224)


def prepare_instructions(data_config, name: str, data_dir: str) -> str:
    """How to get `name` prepared under `data_dir`, in one line (for the error a missing dataset
    raises)."""
    command = f"python -m resnet_jax.data.prepare --dataset {name} --data_dir {data_dir}"
    if name == "imagenet2012":
        manual = data_config.manual_dir or f"{data_dir}/downloads/manual"
        return (f"put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (image-net.org) in "
                f"{manual} and run `{command} --manual_dir {manual}`, or set config.data.data_dir "
                f"to where it is prepared (docs/data.md)")
    return (f"run `{command}` (needs internet; or copy a prepared {data_dir}/{name} here), or set "
            f"config.data.data_dir to where it is prepared (docs/data.md)")
