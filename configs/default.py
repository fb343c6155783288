"""The newcomer's run: CIFAR ResNet-20 on the embedded digits (no download), 2 CPU cores.

    python train.py --config configs/default.py --workdir runs/digits

Expected: >= 97 % test top-1 on the fixed 360-image held-out split.
"""

from resnet_jax.config import base_config


def get_config():
    c = base_config()
    c.model.name = "cifar_resnet20"
    c.data.dataset = "digits"
    c.global_batch_size = 128
    c.schedule.base_lr = 0.2
    c.schedule.length = 30.0
    c.schedule.boundaries = (15.0, 25.0)
    c.log_every_steps = 55  # every 5 epochs of 11 steps
    c.eval_every_steps = 55
    c.checkpoint_every_steps = 110
    return c
