"""Prepare a TFDS dataset once, so that training finds it in data_dir (training never downloads).

    python -m resnet_jax.data.prepare --dataset cifar10 --data_dir DIR
    python -m resnet_jax.data.prepare --dataset imagenet2012 --data_dir DIR --manual_dir ARCHIVES
    python -m resnet_jax.data.prepare --dataset tfds --tfds_name NAME --data_dir DIR

cifar10, cifar100 and most TFDS datasets are downloaded (internet access needed); imagenet2012 is read
from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in --manual_dir (default DIR/downloads/manual).
"""

from absl import flags

from resnet_jax import cli
from resnet_jax.data import catalog
from resnet_jax.errors import FlagError


def prepare(name: str, data_dir: str | None, manual_dir: str | None):
    """Download (or read from manual_dir) and prepare TFDS dataset `name`; returns its builder."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def define_flags() -> None:
    flags.DEFINE_enum("dataset", None, sorted(catalog.DATASETS.keys() - {"folder"}),
                      "The dataset to prepare.", required=True)
    flags.DEFINE_string("tfds_name", None, "TFDS dataset name, for --dataset=tfds.")
    flags.DEFINE_string("data_dir", None, "Where TFDS datasets live (default ~/tensorflow_datasets).")
    flags.DEFINE_string("manual_dir", None, "Manually downloaded archives (imagenet2012).")


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    name = catalog.DATASETS[f.dataset].tfds_name or f.tfds_name
    if not name:
        raise FlagError("--dataset=tfds needs --tfds_name")
    builder = prepare(name, f.data_dir, f.manual_dir)
    print(f"{name} prepared in {builder.data_dir}: {builder.info.splits}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
