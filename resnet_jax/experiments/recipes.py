"""The training recipes that configs/ files share, each applied to a `base_config()`.

A config file picks its variant from the text after ":" in `--config file.py:arg`
(ml_collections passes it to `get_config(arg)`); `choose` parses that text and names the allowed
values when it is wrong.
"""

from typing import Optional, Sequence

import ml_collections

from resnet_jax.config import base_config
from resnet_jax.errors import ConfigError


def choose(arg: Optional[str], allowed: Sequence[Sequence[str]],
           defaults: Sequence[Optional[str]], family: str) -> tuple[str, ...]:
    """Parse "a,b" into one value per position of `allowed`; missing trailing parts take `defaults`
    (None: required). Raises ConfigError listing the allowed values of `family` (a config file)."""
    parts = [p.strip() for p in arg.split(",")] if arg else []
    usage = ",".join("{" + "|".join(a) + "}" for a in allowed)
    if len(parts) > len(allowed):
        raise ConfigError(f"{family}: too many parts in {arg!r}; expected {usage}")
    chosen = []
    for i, options in enumerate(allowed):
        value = parts[i] if i < len(parts) else defaults[i]
        if value not in options:
            raise ConfigError(f"{family}: {value!r} is not allowed; expected {usage} "
                             f"(e.g. {family}:{','.join(a[0] for a in allowed)})")
        chosen.append(value)
    return tuple(chosen)


def paper_imagenet(model: str) -> ml_collections.ConfigDict:
    """He et al. 2015, section 3.4, with the plateau rule fixed to /10 at epochs 30 and 60 of 90.

    SGD momentum 0.9, batch 256, lr 0.1 per 256 images, weight decay 1e-4 (L2, every parameter),
    option B shortcuts, BN over groups of 32 images (the paper's per-GPU BN), scale augmentation
    ("paper_imagenet": shorter side in [256, 480], 224 crop, flip); centre-crop evaluation during
    training (the paper's 10-crop is an eval.py override, 10x the cost).
    """
    c = base_config()
    c.model.name = model
    c.model.shortcut = "B"
    c.model.bn_group_size = 32
    c.data.dataset = "imagenet2012"
    c.data.image_size = 224
    c.data.train_augment = "paper_imagenet"
    c.data.eval_crop = "center"
    c.global_batch_size = 256
    c.eval_batch_size = 400  # 125 batches of the 50,000 validation images
    c.schedule.name = "piecewise"
    c.schedule.unit = "epochs"
    c.schedule.length = 90.0
    c.schedule.boundaries = (30.0, 60.0)
    c.schedule.base_lr = 0.1
    c.schedule.base_batch_size = 256
    c.optimizer.momentum = 0.9
    c.optimizer.weight_decay = 1e-4
    c.log_every_steps = 100
    c.eval_every_steps = None  # every epoch
    c.checkpoint_every_steps = 5000
    return c


def modern_imagenet(model: str) -> ml_collections.ConfigDict:
    """A 2019-era ResNet-50 recipe: batch 1024 at lr 0.1 per 256, 5 epochs of linear warm-up then
    cosine to zero over 90 epochs, Nesterov momentum, label smoothing 0.1, weight decay 1e-4 on
    kernels only (not on BN or bias), zero-initialised last BN of each branch, inception crop,
    bfloat16 compute, BN over the global batch, centre-crop testing."""
    c = paper_imagenet(model)
    c.model.dtype = "bfloat16"
    c.model.zero_init_residual = True
    c.model.bn_group_size = None
    c.data.train_augment = "inception"
    c.global_batch_size = 1024
    c.eval_batch_size = 1000
    c.label_smoothing = 0.1
    c.schedule.name = "cosine"
    c.schedule.boundaries = ()
    c.schedule.warmup = 5.0
    c.schedule.warmup_mode = "linear"
    c.optimizer.nesterov = True
    c.optimizer.exclude_bn_and_bias = True
    return c


def paper_cifar(model: str, dataset: str = "cifar10",
                warmup_steps: int = 0) -> ml_collections.ConfigDict:
    """He et al. 2015, section 4.2: batch 128, lr 0.1, /10 at 32k and 48k iterations, stop at 64k,
    weight decay 1e-4, momentum 0.9; pad-4 crop and flip ("cifar") with per-pixel mean subtraction;
    BN over the global batch of 128 (the paper: 64 per GPU on 2 GPUs). `warmup_steps` at lr 0.01
    (ResNet-110/1202: 400 iterations, until training error is below 80 %)."""
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


def digits_degradation(model: str) -> ml_collections.ConfigDict:
    """The degradation experiment shrunk to a laptop: the embedded 8x8 digits without augmentation
    (max_shift 0), batch 128, constant lr 0.1, BN over the batch; eval every 50 steps."""
    c = base_config()
    c.model.name = model
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


def synthetic_benchmark(model: str) -> ml_collections.ConfigDict:
    """Throughput on synthetic data (no input pipeline cost beyond host arrays): Gaussian images,
    random labels, 100 steps at constant lr; ImageNet models at 224x224x3 in bfloat16 with batch
    256, CIFAR models at 32x32x3 with batch 128."""
    cifar = model.startswith("cifar_")
    c = base_config()
    c.model.name = model
    c.model.dtype = "float32" if cifar else "bfloat16"
    c.data.dataset = "synthetic"
    c.data.image_size = 32 if cifar else 224
    c.data.num_classes = 10 if cifar else 1000
    c.global_batch_size = 128 if cifar else 256
    c.eval_batch_size = c.global_batch_size
    c.data.num_train_examples = 8 * c.global_batch_size
    c.data.num_eval_examples = c.global_batch_size
    c.schedule.name = "constant"
    c.schedule.unit = "steps"
    c.schedule.length = 100.0
    c.schedule.boundaries = ()
    c.schedule.base_batch_size = c.global_batch_size
    c.log_every_steps = 10
    c.eval_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.tensorboard = False
    return c
