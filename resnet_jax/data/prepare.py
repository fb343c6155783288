"""Prepare a TFDS dataset once, so that training finds it in data_dir (training never downloads).

    python -m resnet_jax.data.prepare --dataset cifar10 --data_dir DIR
    python -m resnet_jax.data.prepare --dataset imagenet2012 --data_dir DIR --manual_dir ARCHIVES
    python -m resnet_jax.data.prepare --dataset tfds --tfds_name NAME --data_dir DIR

cifar10, cifar100 and most TFDS datasets are downloaded (internet access needed); imagenet2012 is read
from ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in --manual_dir (default DIR/downloads/manual).
"""

import argparse

from resnet_jax.data import catalog


def prepare(name: str, data_dir: str | None, manual_dir: str | None):
    """Download (or read from manual_dir) and prepare TFDS dataset `name`; returns its builder."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True,
                        choices=sorted(catalog.DATASETS.keys() - {"folder"}))
    parser.add_argument("--tfds_name", help="TFDS dataset name, for --dataset tfds")
    parser.add_argument("--data_dir", help="where TFDS datasets live (default ~/tensorflow_datasets)")
    parser.add_argument("--manual_dir", help="manually downloaded archives (imagenet2012)")
    args = parser.parse_args(argv)
    name = catalog.DATASETS[args.dataset].tfds_name or args.tfds_name
    if not name:
        parser.error("--dataset tfds needs --tfds_name")
    builder = prepare(name, args.data_dir, args.manual_dir)
    print(f"{name} prepared in {builder.data_dir}: {builder.info.splits}")


if __name__ == "__main__":
    main()
