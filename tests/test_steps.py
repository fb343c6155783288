"""The train and eval steps against numpy: label-smoothed cross-entropy, top-k with ties, one SGD step
with BatchNorm statistics, the learning-rate metric, the finite flag, per-class eval sums, the EMA
of the weights, and gradient accumulation against one step over the whole batch with BatchNorm in
groups."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax.models.layers import BatchNorm
from resnet_jax.steps import (TrainState, _topk_correct, create_train_state, cross_entropy,
                              ema_weights, has_ema, make_ema_step, make_eval_step,
                              make_train_step, split_micro_batches, with_ema)


def smoothed_cross_entropy(logits, labels, smoothing):
    """float64 [B]: -sum_c t_c log softmax(logits)_c, t = (1 - smoothing) * one_hot + smoothing / K
    (Szegedy et al. 2016; PyTorch's CrossEntropyLoss(label_smoothing=...))."""
    logits = np.asarray(logits, np.float64)
    k = logits.shape[-1]
    shifted = logits - logits.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    targets = np.full(logits.shape, smoothing / k)
    targets[np.arange(len(labels)), labels] += 1 - smoothing
    return -(targets * log_p).sum(-1)


def test_label_smoothed_cross_entropy_by_hand():
    # Two classes, logits (0, ln 3): p = (1/4, 3/4). Label 1, smoothing 0.2: t = (0.1, 0.9);
    # loss = -(0.1 ln 1/4 + 0.9 ln 3/4) = 0.1 ln 4 + 0.9 ln 4/3.
    logits = jnp.array([[0.0, np.log(3.0)]])
    expected = 0.1 * np.log(4) + 0.9 * np.log(4 / 3)
    assert float(cross_entropy(logits, jnp.array([1]), 0.2)[0]) == pytest.approx(expected, rel=1e-6)
    assert float(cross_entropy(logits, jnp.array([1]), 0.0)[0]) == pytest.approx(np.log(4 / 3),
                                                                                  rel=1e-6)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
    labels = rng.integers(0, 5, 6)
    for smoothing in (0.0, 0.1, 0.5):
        np.testing.assert_allclose(cross_entropy(jnp.asarray(logits), jnp.asarray(labels), smoothing),
                                   smoothed_cross_entropy(logits, labels, smoothing), rtol=1e-5)


def test_topk_counts_ties_as_correct_and_caps_k():
    logits = jnp.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],
                        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],
                        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0],
                        [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    labels = jnp.array([0, 4, 5, 1])  # ranks 0, 4, 5, and 0 tied with class 0
    np.testing.assert_array_equal(_topk_correct(logits, labels, 1), [1, 0, 0, 1])
    np.testing.assert_array_equal(_topk_correct(logits, labels, 5), [1, 1, 0, 1])
    three = jnp.array([[0.0, 1.0, 2.0]])
    np.testing.assert_array_equal(_topk_correct(three, jnp.array([0]), 5), [1])
    np.testing.assert_array_equal(_topk_correct(three, jnp.array([0]), 2), [0])


class TinyNet(nn.Module):
    """BatchNorm on the pixels, global average pooling, a dense classifier."""

    @nn.compact
    def __call__(self, x, train=False):
        x = BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(7, name="head")(jnp.mean(x, axis=(1, 2)))


def tiny_forward(params, x):
    """TinyNet in train mode, in numpy: biased batch variance, epsilon 1e-5."""
    x = np.asarray(x, np.float64)
    mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
    y = (x - mean) / np.sqrt(var + 1e-5) * np.asarray(params["bn"]["scale"]) + np.asarray(
        params["bn"]["bias"])
    return y.mean((1, 2)) @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])


def test_train_step_with_label_smoothing_matches_numpy():
    """One plain-SGD step: the smoothed loss, top-1/top-5, lr of the step before it, the gradient
    step w - lr * g, BatchNorm statistics 0.9 * old + 0.1 * batch, and step + 1."""
    model = TinyNet()
    schedule = optax.piecewise_constant_schedule(0.5, {1: 0.1})
    tx = optax.sgd(schedule)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(8, 4, 4, 3)) * [1, 2, 3] + [1, -1, 0]).astype(np.float32)
    labels = rng.integers(0, 7, 8).astype(np.int32)
    state = create_train_state(model, tx, (4, 4, 3), seed=0)
    params = jax.tree.map(lambda v: v + 0.3, state.params)  # a BN scale and bias that matter
    state = state.replace(params=params, opt_state=tx.init(params))
    step = jax.jit(make_train_step(model, tx, schedule, label_smoothing=0.1))
    new_state, metrics = step(state, {"image": x, "label": labels})

    logits = tiny_forward(params, x)
    assert float(metrics["loss"]) == pytest.approx(
        smoothed_cross_entropy(logits, labels, 0.1).mean(), rel=1e-5)
    order = np.argsort(-logits, axis=-1)
    assert float(metrics["top1"]) == pytest.approx(np.mean(order[:, 0] == labels))
    assert float(metrics["top5"]) == pytest.approx(np.mean([l in o[:5] for l, o in zip(labels, order)]))
    assert float(metrics["lr"]) == 0.5 and all(bool(v) for v in metrics["finite"].values())

    def loss(p):  # the same loss written out, for the gradient
        out = model.apply({"params": p, "batch_stats": state.batch_stats}, x, train=True,
                          mutable=["batch_stats"])[0]
        targets = 0.9 * jax.nn.one_hot(labels, 7) + 0.1 / 7
        return -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(out), -1))

    grads = jax.grad(loss)(params)
    assert float(metrics["grad_norm"]) == pytest.approx(
        np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads))), rel=1e-5)
    jax.tree.map(lambda new, old, g: np.testing.assert_allclose(new, old - 0.5 * g, rtol=1e-5,
                                                                 atol=1e-6),
                 new_state.params, params, grads)
    np.testing.assert_allclose(new_state.batch_stats["bn"]["mean"], 0.1 * x.mean((0, 1, 2)),
                               rtol=1e-5)
    np.testing.assert_allclose(new_state.batch_stats["bn"]["var"], 0.9 + 0.1 * x.var((0, 1, 2)),
                               rtol=1e-5)
    assert int(new_state.step) == 1
    _, metrics = step(new_state, {"image": x, "label": labels})
    assert float(metrics["lr"]) == pytest.approx(0.05)


def test_train_step_without_smoothing_and_with_a_non_finite_input():
    model = TinyNet()
    tx = optax.sgd(0.1)
    state = create_train_state(model, tx, (4, 4, 3), seed=0)
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(0.1)))
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 4, 4, 3)).astype(np.float32)
    batch = {"image": x, "label": np.array([0, 3, 3, 6], np.int32)}
    metrics = step(state, batch)[1]
    assert all(bool(v) for v in metrics["finite"].values())
    # label_smoothing defaults to 0: the plain cross-entropy.
    plain = smoothed_cross_entropy(tiny_forward(state.params, x), batch["label"], 0.0).mean()
    assert float(metrics["loss"]) == pytest.approx(plain, rel=1e-5)
    x[0, 0, 0, 0] = np.inf
    assert not all(bool(v) for v in step(state, dict(batch, image=x))[1]["finite"].values())


def test_create_train_state_starts_at_step_zero_from_the_seed():
    model = TinyNet()
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(model, tx, (4, 4, 3), seed=3)
    variables = model.init(jax.random.split(jax.random.PRNGKey(3))[0], jnp.zeros((1, 4, 4, 3)))
    assert int(state.step) == 0 and state.step.dtype == jnp.int32
    jax.tree.map(np.testing.assert_array_equal, state.params, variables["params"])
    jax.tree.map(np.testing.assert_array_equal, state.batch_stats, variables["batch_stats"])
    assert jax.tree.structure(state.opt_state) == jax.tree.structure(tx.init(variables["params"]))
    other = create_train_state(model, tx, (4, 4, 3), seed=4)
    assert not np.array_equal(other.params["head"]["kernel"], state.params["head"]["kernel"])


def test_ema_follows_the_new_weights_by_the_decay_rule():
    """Two steps of decay 0.75 against the rule by hand, from the initial weights:
    ema_1 = 0.75 w_0 + 0.25 w_1, ema_2 = 0.75 ema_1 + 0.25 w_2 (params and BN statistics, after
    each step's update); the raw weights are those of the step without EMA."""
    model, tx = TinyNet(), optax.sgd(0.5)
    plain = make_train_step(model, tx, optax.constant_schedule(0.5))
    step = jax.jit(make_ema_step(plain, 0.75))
    rng = np.random.default_rng(4)
    batch = {"image": rng.normal(size=(8, 4, 4, 3)).astype(np.float32),
             "label": rng.integers(0, 7, 8).astype(np.int32)}
    state = create_train_state(model, tx, (4, 4, 3), seed=0)
    assert not has_ema(state)
    ema_state = with_ema(state)
    assert has_ema(ema_state)
    jax.tree.map(np.testing.assert_array_equal, ema_state.ema,
                 {"params": state.params, "batch_stats": state.batch_stats})

    def weights(s):
        return jax.tree.map(np.asarray, {"params": s.params, "batch_stats": s.batch_stats})

    def close(a, b):  # float32 rounding of a few operations
        jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7), a, b)

    expected = weights(state)
    for _ in range(2):
        state = jax.jit(plain)(state, batch)[0]
        ema_state = step(ema_state, batch)[0]
        close(weights(ema_state), weights(state))
        expected = jax.tree.map(lambda e, w: 0.75 * e + 0.25 * w, expected, weights(ema_state))
        close(jax.tree.map(np.asarray, ema_state.ema), expected)
    assert not np.allclose(expected["params"]["head"]["kernel"], state.params["head"]["kernel"])
    swapped = ema_weights(ema_state)
    assert jax.tree.structure(swapped) == jax.tree.structure(ema_state)
    jax.tree.map(np.testing.assert_array_equal, weights(swapped), ema_state.ema)


def test_eval_sums_per_class_over_unmasked_rows():
    """Single-view eval of fixed logits (a model that returns its input's first pixel): sums of
    loss, top-1, top-5, count, and per-class top-1 and count, masked rows left out."""

    class Identity(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return x[:, 0, 0, :]

    logits = np.array([[3.0, 0, 0, 0, 0, 0, 0],    # label 0: right
                       [3.0, 0, 0, 0, 0, 0, 0],    # label 2: wrong, tied top-5
                       [0, 0, 0, 0, 0, 0, 5.0],    # label 6: right
                       [0, 1, 2, 3, 4, 5, 6.0],    # label 1: rank 5, wrong top-5
                       [9.0, 0, 0, 0, 0, 0, 0]])   # masked out
    labels = np.array([0, 2, 6, 1, 3], np.int32)
    mask = np.array([1, 1, 1, 1, 0], bool)
    state = TrainState(step=0, params={}, batch_stats={}, opt_state=())
    batch = {"image": logits[:, None, None, :].astype(np.float32), "label": labels, "mask": mask}
    sums = jax.jit(make_eval_step(Identity()))(state, batch)
    nll = smoothed_cross_entropy(logits, labels, 0.0)
    assert float(sums["loss"]) == pytest.approx(nll[:4].sum(), rel=1e-6)
    assert float(sums["top1"]) == 2 and float(sums["top5"]) == 3 and float(sums["count"]) == 4
    np.testing.assert_array_equal(sums["class_top1"], [1, 0, 0, 0, 0, 0, 1])
    np.testing.assert_array_equal(sums["class_count"], [1, 1, 1, 0, 0, 0, 1])


def test_train_step_counts_top1_and_top5_by_the_label_rank():
    """Fixed logits (the image's first pixel plus a zero bias): labels ranked 0, 1, 4 and 5 among 7
    classes give top-1 1/4 and top-5 3/4; the loss is the plain cross-entropy."""

    class Logits(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return x[:, 0, 0, :] + self.param("bias", nn.initializers.zeros, (x.shape[-1],))

    logits = np.array([[5.0, 4, 3, 2, 1, 0, -1]] * 4, np.float32)
    labels = np.array([0, 1, 4, 5], np.int32)
    tx = optax.sgd(0.1)
    state = create_train_state(Logits(), tx, (1, 1, 7), seed=0)
    step = jax.jit(make_train_step(Logits(), tx, optax.constant_schedule(0.1)))
    metrics = step(state, {"image": logits[:, None, None, :], "label": labels})[1]
    assert float(metrics["top1"]) == 0.25 and float(metrics["top5"]) == 0.75
    assert float(metrics["loss"]) == pytest.approx(
        smoothed_cross_entropy(logits, labels, 0.0).mean(), rel=1e-6)


def test_create_train_state_initialises_in_eval_mode_so_grouped_batchnorm_accepts_one_image():
    """The state is initialised on a single image in eval mode: a train-mode init would ask
    BatchNorm for statistics over groups of 4 examples of a batch of 1."""

    class GroupedNet(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = BatchNorm(use_running_average=not train, group_size=4, name="bn")(x)
            return nn.Dense(7, name="head")(jnp.mean(x, axis=(1, 2)))

    state = create_train_state(GroupedNet(), optax.sgd(0.1), (4, 4, 3), seed=0)
    init_rng = jax.random.split(jax.random.PRNGKey(0))[0]
    variables = GroupedNet().init(init_rng, jnp.zeros((1, 4, 4, 3)))
    jax.tree.map(np.testing.assert_array_equal, state.params, variables["params"])
    with pytest.raises(ValueError, match="not a multiple of bn_group_size 4"):
        GroupedNet().init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 3)), train=True)


def test_eval_step_normalises_with_the_running_statistics():
    """Eval mode: BatchNorm uses the state's running mean and variance, not the batch's."""
    model = TinyNet()
    state = create_train_state(model, optax.sgd(0.1), (4, 4, 3), seed=0)
    stats = {"bn": {"mean": np.array([1.0, -2.0, 0.5], np.float32),
                    "var": np.array([4.0, 0.25, 2.0], np.float32)}}
    state = state.replace(batch_stats=stats)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 4, 4, 3)).astype(np.float32)
    labels = np.array([1, 4, 6], np.int32)
    sums = jax.jit(make_eval_step(model))(state, {"image": x, "label": labels,
                                                  "mask": np.ones(3, bool)})
    p = state.params
    y = ((x - stats["bn"]["mean"]) / np.sqrt(stats["bn"]["var"] + 1e-5)
         * np.asarray(p["bn"]["scale"]) + np.asarray(p["bn"]["bias"]))
    logits = y.mean((1, 2)) @ np.asarray(p["head"]["kernel"]) + np.asarray(p["head"]["bias"])
    assert float(sums["loss"]) == pytest.approx(
        smoothed_cross_entropy(logits, labels, 0.0).sum(), rel=1e-5)


def test_frozen_backbone_step_keeps_it_bitwise_and_trains_the_head_in_inference_mode():
    """A linear-probe step (optim.backbone_mask frozen, L2 decay on): the BatchNorm scale and bias
    (one of them -0.0) and running statistics come back bit for bit; the head takes
    w - lr * (g + wd * w) with g from a numpy forward pass using the running statistics."""
    from resnet_jax import optim
    from resnet_jax.config import base_config

    c = base_config().optimizer
    c.momentum, c.weight_decay, c.freeze_backbone = 0.0, 0.01, True
    tx = optim.build_optimizer(c, optax.constant_schedule(0.1))
    model = TinyNet()
    state = create_train_state(model, tx, (4, 4, 3), seed=0)
    rng = np.random.default_rng(3)
    params = jax.tree.map(np.asarray, state.params)
    params["bn"] = {"scale": np.array([1.5, -0.5, 2.0], np.float32),
                    "bias": np.array([-0.0, 0.25, -1.0], np.float32)}
    stats = {"bn": {"mean": np.array([0.5, -0.2, 0.1], np.float32),
                    "var": np.array([2.0, 0.5, 1.5], np.float32)}}
    state = state.replace(params=params, batch_stats=stats, opt_state=tx.init(params))
    x = rng.normal(size=(4, 4, 4, 3)).astype(np.float32)
    labels = np.array([0, 3, 3, 6], np.int32)
    new_state, _ = jax.jit(make_train_step(model, tx, optax.constant_schedule(0.1),
                                           frozen=optim.backbone_mask))(
        state, {"image": x, "label": labels})

    def bits(tree):  # uint32 patterns: -0.0 and +0.0 differ
        return jax.tree.map(lambda a: np.asarray(a).view(np.uint32), tree)

    jax.tree.map(np.testing.assert_array_equal, bits(new_state.params["bn"]), bits(params["bn"]))
    jax.tree.map(np.testing.assert_array_equal, bits(new_state.batch_stats), bits(stats))
    y = ((x - stats["bn"]["mean"]) / np.sqrt(stats["bn"]["var"] + 1e-5) * params["bn"]["scale"]
         + params["bn"]["bias"]).astype(np.float64)
    pooled = y.mean((1, 2))
    logits = pooled @ params["head"]["kernel"] + params["head"]["bias"]
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    delta = (p - np.eye(7)[labels]) / len(labels)
    for name, grad in (("kernel", pooled.T @ delta), ("bias", delta.sum(0))):
        w = params["head"][name]
        np.testing.assert_allclose(new_state.params["head"][name], w - 0.1 * (grad + 0.01 * w),
                                   rtol=1e-5, atol=1e-7)


class GroupedConvNet(nn.Module):
    """A 3x3 convolution, BatchNorm over groups of `group_size` (momentum 0.5), ReLU, average
    pooling, a dense classifier."""

    group_size: int

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = BatchNorm(use_running_average=not train, momentum=0.5, group_size=self.group_size,
                      name="bn")(x)
        return nn.Dense(7, name="head")(jnp.mean(nn.relu(x), axis=(1, 2)))


def test_split_micro_batches_takes_a_slice_of_every_shard():
    """16 rows in 2 shards of 8, 2 micro-batches: micro-batch j holds rows 4j..4j+3 of each
    shard."""
    rows = np.arange(16)
    micro = split_micro_batches({"label": rows, "image": np.stack([rows] * 3, -1)}, 2, 2)
    np.testing.assert_array_equal(micro["label"], [[0, 1, 2, 3, 8, 9, 10, 11],
                                                   [4, 5, 6, 7, 12, 13, 14, 15]])
    np.testing.assert_array_equal(micro["image"][..., 2], micro["label"])
    np.testing.assert_array_equal(split_micro_batches(rows, 4, 1), rows.reshape(4, 4))


@pytest.mark.parametrize("unroll", [False, True])
def test_accumulated_micro_batches_equal_one_step_over_the_batch_in_groups(unroll):
    """Batch 16 on 2 shards, 2 micro-batches of 8 with BatchNorm over the 4 rows each shard holds,
    in a loop or unrolled: two steps (SGD with momentum and weight decay) equal two steps over the
    whole batch with BatchNorm groups of 4 (no accumulation): parameters, momentum, running
    statistics, loss, top-1, top-5 and gradient norm within float32 rounding (rtol 1e-5, atol 1e-6).
    Groups of 8 on the whole batch differ (the comparison can fail)."""
    rng = np.random.default_rng(5)
    images = (rng.normal(size=(2, 16, 6, 6, 3)) * [1, 2, 3] + [0, 1, -1]).astype(np.float32)
    batches = [{"image": x, "label": rng.integers(0, 7, 16).astype(np.int32)} for x in images]
    tx = optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.2, momentum=0.9))
    schedule = optax.constant_schedule(0.2)

    def run(group_size, **accumulation):
        model = GroupedConvNet(group_size)
        state = create_train_state(model, tx, (6, 6, 3), seed=0)
        step = jax.jit(make_train_step(model, tx, schedule, **accumulation))
        metrics = []
        for batch in batches:
            state, m = step(state, batch)
            metrics.append({k: m[k] for k in ("loss", "top1", "top5", "grad_norm")})
        return state, metrics

    accumulated = run(4, accumulation_steps=2, batch_shards=2, unroll_micro_batches=unroll)
    grouped = run(4)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    jax.tree.map(close, (accumulated[0].params, accumulated[0].opt_state,
                         accumulated[0].batch_stats, accumulated[1]),
                 (grouped[0].params, grouped[0].opt_state, grouped[0].batch_stats, grouped[1]))
    assert int(accumulated[0].step) == 2
    whole = run(8)[0]
    assert not np.allclose(whole.batch_stats["bn"]["var"], grouped[0].batch_stats["bn"]["var"],
                           rtol=1e-3)
    assert not np.allclose(whole.params["conv"]["kernel"], grouped[0].params["conv"]["kernel"],
                           rtol=1e-3)
