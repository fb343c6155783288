"""Building layers shared by every residual network: convolution, BatchNorm, shortcuts.

All tensors are NHWC. Parameters and BatchNorm statistics are float32; `dtype` is the compute dtype.
Padding is explicit and symmetric (as torchvision), so imported torchvision weights give its logits.
"""

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# He et al. 2015 initialisation, fan-out mode (torchvision's kaiming_normal_(mode="fan_out")).
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int = 1, groups: int = 1, *, dtype: Dtype,
         name: Optional[str] = None, kernel_init: Any = he_normal_fan_out) -> nn.Conv:
    """A bias-free `kernel` x `kernel` convolution padded by kernel // 2 on every side."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                   padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=False,
                   kernel_init=kernel_init, dtype=dtype, param_dtype=jnp.float32, name=name)


class BatchNorm(nn.Module):
    """BatchNorm over the batch, or over consecutive groups of `group_size` examples.

    Statistics are float32, over (N, H, W) of x: [N, H, W, C]; with `group_size` set, each group of
    `group_size` consecutive examples is normalised by its own statistics (the paper's BN over 32
    images per GPU), and the running statistics average the groups' statistics. Under `jax.jit` with
    the batch sharded, whole-batch statistics are global-batch statistics.

    Mean and mean square come from one fused pass (var = E[x^2] - E[x]^2, accumulated in float32);
    the per-channel scale and shift are folded in float32 and applied to x in `dtype`.
    `momentum` follows Flax: running = momentum * running + (1 - momentum) * batch (PyTorch's 0.1 is
    0.9). The batch is normalised by its biased variance (over the n = group * H * W values of a
    channel); the running variance averages that biased variance, or with `unbiased_running_var`
    the unbiased n / (n - 1) times it (PyTorch's and Caffe's running_var; n = 1 keeps the biased
    one, as Caffe). The output has dtype `dtype`.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    group_size: Optional[int] = None
    unbiased_running_var: bool = False
    scale_init: Any = nn.initializers.ones
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))

        if self.use_running_average:
            return self._normalize(x, ra_mean.value, ra_var.value, scale, bias)

        batch = x.shape[0]
        group = self.group_size or batch
        if batch % group:
            raise ValueError(f"BatchNorm: batch size {batch} is not a multiple of bn_group_size {group}")
        xg = x.reshape((batch // group, group) + x.shape[1:])
        axes = tuple(range(1, xg.ndim - 1))
        mean = jnp.mean(xg, axis=axes, dtype=jnp.float32, keepdims=True)
        mean_sq = jnp.mean(jnp.square(xg.astype(jnp.float32)), axis=axes, keepdims=True)
        var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
        if not self.is_initializing():
            over_groups = tuple(range(xg.ndim - 1))
            n = math.prod(xg.shape[1:-1])  # values of a channel in one group
            correction = n / (n - 1) if self.unbiased_running_var and n > 1 else 1.0
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, axis=over_groups)
            ra_var.value = m * ra_var.value + (1 - m) * correction * jnp.mean(var, axis=over_groups)
        return self._normalize(xg, mean, var, scale, bias).reshape(x.shape)

    def _normalize(self, x, mean, var, scale, bias):
        """x * a + b in `dtype`, with a = scale / sqrt(var + eps) and b = bias - mean * a (float32)."""
        a = scale * jax.lax.rsqrt(var + self.epsilon)
        b = bias - mean * a
        return x.astype(self.dtype) * a.astype(self.dtype) + b.astype(self.dtype)


def subsample_and_zero_pad(x: jnp.ndarray, features: int, stride: int) -> jnp.ndarray:
    """Option A shortcut: keep every `stride`-th pixel and zero-pad channels up to `features`.

    x: [N, H, W, C] -> [N, ceil(H / stride), ceil(W / stride), features]; no parameters.
    """
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    extra = features - x.shape[-1]
    if extra < 0:
        raise ValueError(f"option A cannot shrink channels ({x.shape[-1]} -> {features})")
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return x
