"""The residual network: a stem, stages of blocks, global average pooling, a linear classifier.

`ResNet` maps images x: [N, H, W, C] (any float dtype) to logits: [N, num_classes] float32. The ImageNet
stem is a 7x7/2 convolution and a 3x3/2 max-pool (stages of 64, 128, 256, 512 planes); the CIFAR stem
is a 3x3 convolution of 16 channels on 32x32 inputs (stages of 16, 32, 64 planes). Variables:
`params` (float32) and `batch_stats` (float32 BatchNorm running mean and variance).
"""

from functools import partial
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models.blocks import block_class
from resnet_jax.models.layers import BatchNorm, conv

STEMS = ("imagenet", "cifar")


class ResNet(nn.Module):
    """A ResNet, pre- or post-activation, with any of the paper's shortcut options.

    Attributes:
      stage_sizes: blocks per stage.
      stage_planes: planes per stage; a stage outputs planes * the block's expansion channels.
      block: "basic" or "bottleneck".
      stem: "imagenet" or "cifar".
      num_classes: classifier outputs.
      shortcut: "A", "B", "C" or "none" (plain network), see blocks.py.
      preact: pre-activation blocks (He et al. 2016) with a final BN-ReLU before pooling.
      stride_on_3x3: bottleneck v1.5 (True, torchvision) or v1 (False, the paper's released models).
      groups, width_per_group: ResNeXt cardinality and width (Wide-ResNet: width_per_group=128).
      zero_init_residual: every residual branch starts at zero.
      bn_momentum, bn_epsilon: BatchNorm running-average momentum (Flax convention) and epsilon.
      bn_group_size: examples per BatchNorm statistics group; None for the whole (global) batch.
      bn_unbiased_running_var: the running variance averages the unbiased batch variance (PyTorch,
        Caffe) instead of the biased one that normalises the batch.
      remat: rematerialise each residual block in the backward pass (flax.linen.remat): its
        activations are recomputed instead of kept, for memory; the same variables and results.
      dtype: compute dtype (float32 or bfloat16); parameters and statistics stay float32.
    """

    stage_sizes: Sequence[int]
    stage_planes: Sequence[int]
    block: str = "basic"
    stem: str = "imagenet"
    num_classes: int = 1000
    shortcut: str = "B"
    preact: bool = False
    stride_on_3x3: bool = True
    groups: int = 1
    width_per_group: int = 64
    zero_init_residual: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_group_size: Optional[int] = None
    bn_unbiased_running_var: bool = False
    remat: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
        norm = partial(BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, group_size=self.bn_group_size,
                       unbiased_running_var=self.bn_unbiased_running_var, dtype=self.dtype)
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = conv(64, 7, 2, dtype=self.dtype, name="stem_conv")(x)
            x = nn.relu(norm(name="stem_bn")(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = conv(self.stage_planes[0], 3, 1, dtype=self.dtype, name="stem_conv")(x)
            if not self.preact:
                x = nn.relu(norm(name="stem_bn")(x))

        block_cls = nn.remat(block_class(self.block)) if self.remat else block_class(self.block)
        extra = {}
        for s, (num_blocks, planes) in enumerate(zip(self.stage_sizes, self.stage_planes)):
            if self.block == "bottleneck":
                width = int(planes * self.width_per_group / 64) * self.groups
                extra = dict(width=width, groups=self.groups, stride_on_3x3=self.stride_on_3x3)
            for b in range(num_blocks):
                x = block_cls(
                    features=planes * block_cls.expansion,
                    stride=2 if (s > 0 and b == 0) else 1,
                    shortcut=self.shortcut,
                    preact=self.preact,
                    skip_preact=self.preact and self.stem == "imagenet" and s == 0 and b == 0,
                    zero_init_residual=self.zero_init_residual,
                    norm=norm,
                    dtype=self.dtype,
                    name=f"stage{s + 1}_block{b + 1}",
                    **extra,
                )(x)
        if self.preact:
            x = nn.relu(norm(name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32, name="head")(x)
        return x.astype(jnp.float32)
