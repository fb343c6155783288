"""CIFAR-10 ResNet-20/32/44/56/110/1202 and plain-20/32/44/56/110, the paper's recipe (section 4.2).

    python train.py --config configs/cifar.py:resnet56 --workdir runs/cifar_resnet56
    python -m resnet_jax.experiments.sweep --workdir_root runs/fig6 --seeds=5 \
        --configs configs/cifar.py:plain20,configs/cifar.py:plain56,configs/cifar.py:resnet20,configs/cifar.py:resnet56
    python -m resnet_jax.experiments.table --workdir_root runs/fig6 --out_markdown docs/table6.md
    python -m resnet_jax.experiments.plot --out docs/fig6.png runs/fig6/*

Recipe: batch 128, lr 0.1, /10 at 32k and 48k iterations, stop at 64k; SGD momentum 0.9, weight
decay 1e-4; option A shortcuts (plain nets: none); 16/32/64 filters, 6n+2 layers; pad-4 crop and
flip with per-pixel mean subtraction; single 32x32 test image; BN over the global batch of 128.
ResNet-110 and ResNet-1202 start at lr 0.01 for 400 iterations (the paper: until the training error
is below 80 %). Trains on the full 50k (the paper chose the schedule on a 45k/5k split; add
--config.data.train_split="train[:45000]" --config.data.eval_split="train[45000:]" for that).
Needs cifar10 prepared (python -m resnet_jax.data.prepare --dataset cifar10).

Expected test error (paper Table 6): ResNet-20 8.75 %, -32 7.51 %, -44 7.17 %, -56 6.97 %,
-110 6.43 % (6.61 +- 0.16 over 5 runs), -1202 7.93 %. Plain nets (paper Fig. 6): deeper has higher
training and test error; plain-110 over 60 % error.
Expected time (estimate, not measured): 64k steps x 128 = 8.2M images; ResNet-110 (253M MACs, about
1.5 GFLOP per training image) is 12 PFLOP, about an hour or less on one A100/H100 (convolutions of
16-64 channels at batch 128 use a GPU poorly); ResNet-20 about a sixth of that; ResNet-1202 about
11x ResNet-110.
"""

from resnet_jax.config import base_config, choose

DEPTHS = {"resnet": (20, 32, 44, 56, 110, 1202), "plain": (20, 32, 44, 56, 110)}
MODELS = tuple(f"{kind}{d}" for kind, depths in DEPTHS.items() for d in depths)
WARMUP_STEPS = {"resnet110": 400, "resnet1202": 400}


def get_config(arg=None):
    (model,) = choose(arg, [MODELS], [None], "configs/cifar.py")
    return paper_recipe(f"cifar_{model}", "cifar10", WARMUP_STEPS.get(model, 0))


def paper_recipe(model: str, dataset: str, warmup_steps: int):
    """The recipe above for `model` on `dataset`, with `warmup_steps` at lr 0.01 (configs/cifar_preact.py
    shares it)."""
    c = base_config()
    c.model.name = model
    c.data.dataset = dataset
    c.data.image_size = 32
    c.data.train_augment = "cifar"
    c.data.normalization = "per_pixel_mean"
    c.data.eval_crop = "center"
    c.global_batch_size = 128
    c.eval_batch_size = 1000  # 10 batches of the 10,000 test images
    c.schedule.name = "piecewise"
    c.schedule.unit = "steps"
    c.schedule.length = 64000.0
    c.schedule.boundaries = (32000.0, 48000.0)
    c.schedule.base_lr = 0.1
    c.schedule.base_batch_size = 128
    if warmup_steps:
        c.schedule.warmup = float(warmup_steps)
        c.schedule.warmup_mode = "constant"
        c.schedule.warmup_factor = 0.1
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 2000
    return c
