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

from resnet_jax.experiments.recipes import choose, modern_imagenet

MODELS = ("resnet50",)


def get_config(arg=None):
    (model,) = choose(arg, [MODELS], [MODELS[0]], "configs/imagenet_modern.py")
    return modern_imagenet(model)
