"""BatchNorm, convolution padding, He initialisation and the option A shortcut against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models.layers import BatchNorm, conv, subsample_and_zero_pad

EPS = 1e-5


def batches(n, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(6, 3, 3, 4)) * [1, 2, 0.5, 3] + [0, 1, -2, 5]).astype(np.float32)
            for _ in range(n)]


def test_batchnorm_running_statistics_follow_the_flax_momentum_rule():
    """After each train-mode call, running = m * running + (1 - m) * batch statistic, m = 0.9, from
    mean 0 and variance 1 (Flax's convention: PyTorch's momentum=0.1 is m = 0.9).

    The variance kept is the biased batch variance, sum (x - mean)^2 / n over the n = N*H*W values
    of a channel, the one that normalises the batch. PyTorch normalises with the same biased
    variance but updates running_var with the unbiased one, n / (n - 1) times larger; imported
    torchvision statistics are used as they are, so the two agree in eval mode (PyTorch's update is
    the unbiased_running_var option, tested below).
    """
    bn = BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), batches(1)[0])
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(4))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(4))
    mean, var = np.zeros(4), np.ones(4)
    for i, x in enumerate(batches(3)):
        _, updates = bn.apply(variables, x, mutable=["batch_stats"])
        variables = {**variables, **updates}
        mean = 0.9 * mean + 0.1 * x.mean((0, 1, 2))
        var = 0.9 * var + 0.1 * x.var((0, 1, 2))  # numpy's var is the biased one (ddof=0)
        np.testing.assert_allclose(variables["batch_stats"]["mean"], mean, rtol=1e-5, atol=1e-6,
                                   err_msg=f"mean after {i + 1} updates")
        np.testing.assert_allclose(variables["batch_stats"]["var"], var, rtol=1e-5,
                                   err_msg=f"var after {i + 1} updates")
    # After one update PyTorch's running_var would hold the unbiased batch variance instead.
    x = batches(1)[0]
    _, updates = bn.apply(bn.init(jax.random.key(0), x), x, mutable=["batch_stats"])
    n = x.size // x.shape[-1]
    unbiased = 0.9 + 0.1 * x.var((0, 1, 2)) * n / (n - 1)
    assert np.all(np.abs(updates["batch_stats"]["var"] - unbiased) > 1e-4 * unbiased)


def test_batchnorm_momentum_option_and_grouped_running_average():
    x = batches(1)[0]
    bn = BatchNorm(use_running_average=False, momentum=0.5, group_size=3)
    _, updates = bn.apply(bn.init(jax.random.key(0), x), x, mutable=["batch_stats"])
    groups = x.reshape(2, 3, 3, 3, 4)
    np.testing.assert_allclose(updates["batch_stats"]["mean"],
                               0.5 * groups.mean((1, 2, 3)).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"],
                               0.5 + 0.5 * groups.var((1, 2, 3)).mean(0), rtol=1e-5)


def test_unbiased_running_variance_is_n_over_n_minus_1_times_the_group_variance():
    """unbiased_running_var: running var = m * old + (1 - m) * the mean over groups of each group's
    unbiased variance (numpy ddof=1 over its n = 3 * 3 * 3 = 27 values of a channel), as PyTorch's
    running_var; the running mean and the normalised output are those of the biased option. One
    value per channel (n = 1) keeps the biased variance, 0, instead of 0 / 0."""
    x = batches(1)[0]
    grouped = x.reshape(2, 3, 3, 3, 4).transpose(0, 4, 1, 2, 3).reshape(2, 4, 27)
    out = {}
    for unbiased in (False, True):
        bn = BatchNorm(use_running_average=False, momentum=0.5, group_size=3,
                       unbiased_running_var=unbiased)
        out[unbiased] = bn.apply(bn.init(jax.random.key(0), x), x, mutable=["batch_stats"])
    (y, biased), (y_unbiased, unbiased) = out[False], out[True]
    np.testing.assert_allclose(unbiased["batch_stats"]["var"],
                               0.5 + 0.5 * grouped.var(-1, ddof=1).mean(0), rtol=1e-5)
    np.testing.assert_allclose(unbiased["batch_stats"]["mean"], biased["batch_stats"]["mean"],
                               rtol=1e-6)
    np.testing.assert_allclose(y_unbiased, y, rtol=1e-6, atol=1e-6)
    one = np.arange(8, dtype=np.float32).reshape(2, 1, 1, 4)
    bn = BatchNorm(use_running_average=False, group_size=1, unbiased_running_var=True)
    _, single = bn.apply(bn.init(jax.random.key(0), one), one, mutable=["batch_stats"])
    np.testing.assert_allclose(single["batch_stats"]["var"], 0.9, rtol=1e-6)


def test_batchnorm_normalises_with_batch_statistics_in_training_and_running_ones_in_eval():
    x = batches(1)[0]
    scale = np.array([1.0, 2.0, -1.0, 0.5], np.float32)
    bias = np.array([0.0, 1.0, 2.0, -3.0], np.float32)
    params = {"scale": scale, "bias": bias}
    stats = {"mean": np.array([1.0, -1.0, 0.5, 2.0], np.float32),
             "var": np.array([4.0, 0.25, 1.0, 9.0], np.float32)}
    variables = {"params": params, "batch_stats": stats}
    train, _ = BatchNorm(use_running_average=False).apply(variables, x, mutable=["batch_stats"])
    expected = (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + EPS) * scale + bias
    np.testing.assert_allclose(train, expected, rtol=1e-4, atol=1e-5)
    evaluated = BatchNorm(use_running_average=True).apply(variables, x)
    expected = (x - stats["mean"]) / np.sqrt(stats["var"] + EPS) * scale + bias
    np.testing.assert_allclose(evaluated, expected, rtol=1e-5, atol=1e-5)
    # epsilon 1e-5 (PyTorch's) is what a zero variance is divided by.
    zero_var = {"params": params, "batch_stats": {"mean": stats["mean"], "var": np.zeros(4, np.float32)}}
    out = BatchNorm(use_running_average=True).apply(zero_var, np.zeros((1, 1, 1, 4), np.float32))
    np.testing.assert_allclose(out[0, 0, 0], -stats["mean"] / np.sqrt(EPS) * scale + bias, rtol=1e-4)


@pytest.mark.parametrize("spread", [0.0, 1e-3])
def test_batchnorm_variance_of_a_constant_channel_is_zero_not_negative(spread):
    """Channels near 1000 with spread 0 or 1e-3: E[x^2] - E[x]^2 in float32 cancels to about +-0.1
    (negative in some channels of this batch), and the variance kept is clamped at 0."""
    x = (1000 + np.random.default_rng(3).normal(size=(4, 2, 2, 3)) * spread).astype(np.float32)
    out, updates = BatchNorm(use_running_average=False).apply(
        {"params": {"scale": np.ones(3, np.float32), "bias": np.zeros(3, np.float32)},
         "batch_stats": {"mean": np.zeros(3, np.float32), "var": np.ones(3, np.float32)}},
        x, mutable=["batch_stats"])
    assert np.all(np.isfinite(out)) and (spread or np.abs(out).max() < 1.0)
    assert np.all(updates["batch_stats"]["var"] >= 0.9)


def cross_correlate(x, w, stride, pad):
    """numpy NHWC convolution (cross-correlation, as PyTorch) with symmetric zero padding."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = w.shape[0]
    oh, ow = (x.shape[1] - k) // stride + 1, (x.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, w.shape[-1]))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize("kernel,stride,size", [(3, 1, 5), (3, 2, 8), (7, 2, 9), (1, 2, 7)])
def test_conv_pads_kernel_over_2_on_every_side_like_pytorch(kernel, stride, size):
    x = np.random.default_rng(kernel + stride).normal(size=(2, size, size, 3)).astype(np.float32)
    # Stride 1 through the default.
    layer = (conv(5, kernel, stride, dtype=jnp.float32) if stride > 1
             else conv(5, kernel, dtype=jnp.float32))
    variables = layer.init(jax.random.key(0), x)
    assert set(variables["params"]) == {"kernel"}  # no bias
    w = np.asarray(variables["params"]["kernel"])
    assert w.shape == (kernel, kernel, 3, 5)
    np.testing.assert_allclose(layer.apply(variables, x), cross_correlate(x, w, stride, kernel // 2),
                               rtol=1e-4, atol=1e-4)


def test_conv_he_initialisation_uses_fan_out():
    w = conv(256, 3, dtype=jnp.float32).init(jax.random.key(0), np.zeros((1, 3, 3, 64)))
    std = float(np.std(w["params"]["kernel"]))
    assert std == pytest.approx(np.sqrt(2 / (3 * 3 * 256)), rel=0.03)  # fan_out, not fan_in (64)


@pytest.mark.parametrize("size", [7, 8])
def test_option_a_keeps_every_second_pixel_from_the_first_and_pads_channels_last(size):
    x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
    out = subsample_and_zero_pad(jnp.asarray(x), 5, 2)
    assert out.shape == (2, (size + 1) // 2, (size + 1) // 2, 5)
    np.testing.assert_array_equal(out[..., :3], x[:, 0::2, 0::2])
    np.testing.assert_array_equal(out[..., 3:], 0.0)
    np.testing.assert_array_equal(subsample_and_zero_pad(jnp.asarray(x), 3, 1), x)
    with pytest.raises(ValueError, match=r"cannot shrink channels \(3 -> 2\)"):
        subsample_and_zero_pad(jnp.asarray(x), 2, 1)
