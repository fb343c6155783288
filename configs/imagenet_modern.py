"""ImageNet ResNet-50 with a modern recipe (Goyal et al. 2017; He et al. 2019, "Bag of Tricks").

    python train.py --config configs/imagenet_modern.py --workdir runs/imagenet_r50_modern

Recipe: batch 1024 at lr 0.1 per 256 (peak 0.4), linear warm-up over 5 epochs then cosine decay to 0
at epoch 90, Nesterov momentum 0.9, weight decay 1e-4 on convolution and dense kernels only (not on
BN or bias), label smoothing 0.1, zero-initialised last BN of each residual branch, inception crop,
bfloat16 compute (float32 parameters), BN over the global batch, single centre-crop testing.

Expected: about 77 % top-1, single crop, at 90 epochs (anchor: NVIDIA DeepLearningExamples
ResNet-50 v1.5, a similar recipe, 77.12 % at 90 epochs; not reproduced here).
Expected time (estimate, not measured): 115M images at about 2,400 img/s on one A100 in mixed
precision (NVIDIA DLE), about 13 hours; on 8 H100s about 35 minutes at the MLPerf per-chip rate.
"""

from configs import imagenet
from resnet_jax.config import choose

MODELS = ("resnet50",)


def get_config(arg=None):
    (model,) = choose(arg, [MODELS], [MODELS[0]], "configs/imagenet_modern.py")
    c = imagenet.get_config(model)
    c.model.dtype = "bfloat16"
    c.model.zero_init_residual = True
    c.model.bn_group_size = None
    c.data.train_augment = "inception"
    c.data.normalization = "per_channel"
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
