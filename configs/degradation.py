"""The degradation experiment on a laptop: plain vs residual CIFAR nets on the embedded 8x8 digits.

    python -m resnet_jax.experiments.sweep --workdir_root runs/degradation \
        --configs configs/degradation.py:plain20,configs/degradation.py:plain56,configs/degradation.py:resnet20,configs/degradation.py:resnet56
    python -m resnet_jax.experiments.plot --out docs/degradation_digits.png runs/degradation/*

Recipe: the 1,437 training digits without augmentation, batch 128, constant lr 0.1, momentum 0.9,
weight decay 1e-4, 400 iterations (about 36 epochs), BN over the batch; eval on the 360 held-out
digits every 50 iterations. Compare training error at equal iterations (docs/experiments.md).
Expected (measured, docs/experiments.md): training error at iteration 400: plain-20 0.0 %, plain-56
49.6 %; ResNet-20 0.0 %, ResNet-56 0.6 % (ResNet-56 is unstable for its first ~120 iterations at
lr 0.1; with --config.schedule.warmup=50 --config.schedule.warmup_mode=constant, lr 0.01 first, it
keeps up with ResNet-20: 0.0 % from iteration 200). Expected time (measured, 2 CPU cores shared
with other jobs): the four runs took 7.5 minutes in all; median step 61 ms (ResNet-20), 155 ms
(plain-20), 164 ms (ResNet-56), 412 ms (plain-56), plus 20-60 s of start-up and compilation per run.
"""

from resnet_jax.config import base_config, choose

MODELS = ("plain20", "plain56", "plain110", "resnet20", "resnet56", "resnet110")


def get_config(arg=None):
    (model,) = choose(arg, [MODELS], [None], "configs/degradation.py")
    c = base_config()
    c.model.name = f"cifar_{model}"
    c.data.dataset = "digits"
    c.data.max_shift = 0
    c.global_batch_size = 128
    c.eval_batch_size = 360
    c.schedule.name = "constant"
    c.schedule.unit = "steps"
    c.schedule.length = 400.0
    c.schedule.boundaries = ()
    c.schedule.base_lr = 0.1
    c.schedule.base_batch_size = 128
    c.log_every_steps = 10
    c.eval_every_steps = 50
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2
    c.tensorboard = False
    return c
