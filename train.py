"""Train a ResNet: python train.py --config configs/X.py --workdir DIR [--config.field=value ...]

resnet_jax.train_command's flags and main (its docstring says more), with --config defaulting to
this repository's configs/default.py, wherever the command is started from.
"""

import os

from resnet_jax import cli, train_command

if __name__ == "__main__":
    train_command.define_flags(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"))
    cli.run(train_command.main)
