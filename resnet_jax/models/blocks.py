"""Residual blocks of He et al. 2015 (post-activation) and He et al. 2016 (pre-activation).

A block maps x: [N, H, W, C_in] to [N, H / stride, W / stride, features] in the compute dtype.
Shortcut options, as the paper names them:
  "A"    identity; where the shape changes, subsample and zero-pad the new channels (no parameters);
  "B"    identity where shapes match, a 1x1 projection (with BN in post-activation) where they change;
  "C"    a projection on every block;
  "none" no shortcut: the plain network of the degradation experiment.
Post-activation order: conv, BN, ReLU, ..., conv, BN, add, ReLU.
Pre-activation order: BN, ReLU, conv, ...; the identity path stays bare, and a projection shortcut
takes the pre-activated input (as He et al. 2016's code).
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models.layers import BatchNorm, conv, he_normal_fan_out, subsample_and_zero_pad

SHORTCUTS = ("A", "B", "C", "none")


class ResidualBlockBase(nn.Module):
    """Shared shortcut and activation logic; subclasses define `branch_layers`.

    Attributes:
      features: output channels.
      stride: spatial stride of the block.
      shortcut: one of SHORTCUTS.
      preact: pre-activation order (He et al. 2016) instead of post-activation.
      skip_preact: omit the leading BN-ReLU of a pre-activation block (its input is already activated).
      zero_init_residual: start each branch at zero (last BN scale, or last conv when pre-activated).
      norm: BatchNorm constructor with its training mode and options bound.
      dtype: compute dtype.
    """

    features: int
    stride: int = 1
    shortcut: str = "B"
    preact: bool = False
    skip_preact: bool = False
    zero_init_residual: bool = False
    norm: Callable[..., BatchNorm] = BatchNorm
    dtype: Any = jnp.float32

    expansion = 1  # output channels per "plane" of the stage

    def branch_layers(self) -> Sequence[tuple[int, int, int, int]]:
        """(kernel, output channels, stride, groups) of each convolution on the residual branch."""
        raise NotImplementedError

    def _shortcut(self, x: jnp.ndarray, preactivated: jnp.ndarray) -> jnp.ndarray | None:
        """The shortcut path of `x` (None for "none"); a projection reads `preactivated`, which is
        `x` itself in post-activation order. Names outside SHORTCUTS are rejected by the registry
        (and raise KeyError here)."""
        changes_shape = self.stride != 1 or x.shape[-1] != self.features
        path = {"none": "none", "A": "pad" if changes_shape else "identity",
                "B": "project" if changes_shape else "identity", "C": "project"}[self.shortcut]
        if path == "none":
            return None
        if path == "identity":
            return x
        if path == "pad":
            return subsample_and_zero_pad(x, self.features, self.stride)
        projected = conv(self.features, 1, self.stride, dtype=self.dtype,
                         name="shortcut_conv")(preactivated)
        return projected if self.preact else self.norm(name="shortcut_bn")(projected)

    def _pre_activation(self, x: jnp.ndarray) -> jnp.ndarray:
        """BN, ReLU, conv for each layer; the shortcut bypasses the first BN-ReLU."""
        layers = self.branch_layers()
        h = x if self.skip_preact else nn.relu(self.norm(name="bn1")(x))
        residual = self._shortcut(x, h)
        for i, (kernel, features, stride, groups) in enumerate(layers, start=1):
            if i > 1:
                h = nn.relu(self.norm(name=f"bn{i}")(h))
            zero = i == len(layers) and self.zero_init_residual
            h = conv(features, kernel, stride, groups, dtype=self.dtype, name=f"conv{i}",
                     kernel_init=nn.initializers.zeros if zero else he_normal_fan_out)(h)
        return h if residual is None else h + residual.astype(h.dtype)

    def _post_activation(self, x: jnp.ndarray) -> jnp.ndarray:
        """conv, BN (, ReLU) for each layer, then the sum with the shortcut and a ReLU."""
        layers = self.branch_layers()
        h = x
        for i, (kernel, features, stride, groups) in enumerate(layers, start=1):
            h = conv(features, kernel, stride, groups, dtype=self.dtype, name=f"conv{i}")(h)
            zero = i == len(layers) and self.zero_init_residual
            h = self.norm(name=f"bn{i}", scale_init=nn.initializers.zeros if zero
                          else nn.initializers.ones)(h)
            if i < len(layers):
                h = nn.relu(h)
        residual = self._shortcut(x, x)
        return nn.relu(h if residual is None else h + residual.astype(h.dtype))

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return self._pre_activation(x) if self.preact else self._post_activation(x)


class BasicBlock(ResidualBlockBase):
    """Two 3x3 convolutions (ResNet-18/34, the CIFAR ResNets); output channels = `features`."""

    def branch_layers(self):
        return ((3, self.features, self.stride, 1), (3, self.features, 1, 1))


class BottleneckBlock(ResidualBlockBase):
    """1x1 reduce, 3x3 (grouped for ResNeXt), 1x1 expand; output channels = `features` (4x planes).

    Attributes:
      width: channels of the 3x3 convolution (planes * width_per_group / 64 * groups, as torchvision).
      groups: groups of the 3x3 convolution (ResNeXt cardinality).
      stride_on_3x3: v1.5 (torchvision) strides the 3x3; v1 (the paper's models) strides the first 1x1.
    """

    expansion = 4
    width: int = 64
    groups: int = 1
    stride_on_3x3: bool = True

    def branch_layers(self):
        s = self.stride
        first, middle = (1, s) if self.stride_on_3x3 else (s, 1)
        return ((1, self.width, first, 1), (3, self.width, middle, self.groups),
                (1, self.features, 1, 1))


def block_class(kind: str) -> type[ResidualBlockBase]:
    """'basic' -> BasicBlock, 'bottleneck' -> BottleneckBlock."""
    return {"basic": BasicBlock, "bottleneck": BottleneckBlock}[kind]

