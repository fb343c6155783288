"""Learning-rate schedules and SGD variants against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import optim
from resnet_jax.config import base_config


def schedule_config(**fields):
    c = base_config().schedule
    for k, v in fields.items():
        c[k] = v
    return c


def lrs(config, steps, steps_per_epoch=100, batch=256):
    fn = optim.learning_rate_schedule(config, steps_per_epoch, batch)
    return [float(fn(s)) for s in steps]


def test_paper_cifar_schedule():
    # 0.1 at batch 128, divided by 10 at 32k and 48k iterations, stop at 64k.
    c = schedule_config(unit="steps", length=64000, boundaries=(32000, 48000), base_lr=0.1,
                        base_batch_size=128)
    assert lrs(c, [0, 31999, 32000, 47999, 48000, 63999], batch=128) == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert optim.total_steps(c, 390) == 64000


def test_resnet110_warmup_is_constant_0_01_for_400_iterations():
    c = schedule_config(unit="steps", length=64000, boundaries=(32000, 48000), base_lr=0.1,
                        base_batch_size=128, warmup=400, warmup_mode="constant", warmup_factor=0.1)
    assert lrs(c, [0, 399, 400, 32000], batch=128) == pytest.approx([0.01, 0.01, 0.1, 0.01])


def test_imagenet_schedule_in_epochs_with_linear_scaling():
    c = schedule_config(unit="epochs", length=90, boundaries=(30, 60, 80), base_lr=0.1)
    # Global batch 1024 -> peak 0.4; 100 steps per epoch.
    assert lrs(c, [0, 2999, 3000, 6000, 8000], batch=1024) == pytest.approx(
        [0.4, 0.4, 0.04, 0.004, 0.0004])


def test_cosine_with_linear_warmup():
    c = schedule_config(name="cosine", unit="epochs", length=10, warmup=2, base_lr=0.1)
    values = lrs(c, [0, 100, 200, 600, 999])
    assert values[0] == 0.0 and values[1] == pytest.approx(0.05)
    assert values[2] == pytest.approx(0.1)
    assert values[3] == pytest.approx(0.05, rel=1e-3)  # halfway through the decay
    assert values[4] < 1e-5
    assert "1,000 steps = 10.00 epochs" in optim.describe_schedule(c, 100, 256)


def _one_update(mode, exclude, nesterov=False):
    c = base_config().optimizer
    c.weight_decay, c.weight_decay_mode, c.exclude_bn_and_bias = 0.5, mode, exclude
    c.momentum, c.nesterov = 0.9, nesterov
    tx = optim.build_optimizer(c, optax.constant_schedule(0.1))
    params = {"conv": {"kernel": jnp.array(2.0)}, "bn": {"bias": jnp.array(2.0)}}
    grads = {"conv": {"kernel": jnp.array(1.0)}, "bn": {"bias": jnp.array(1.0)}}
    state = tx.init(params)
    u1, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, u1)
    u2, _ = tx.update(grads, state, params)
    return jax.tree.map(float, (u1, u2))


def test_l2_weight_decay_enters_the_gradient_before_momentum():
    (u1, u2) = _one_update("l2", exclude=False)
    # g + wd * w = 1 + 0.5 * 2 = 2 -> -0.2; then w = 1.8, buf = 0.9 * 2 + (1 + 0.9) = 3.7 -> -0.37
    assert u1["conv"]["kernel"] == pytest.approx(-0.2)
    assert u2["conv"]["kernel"] == pytest.approx(-0.37)


def test_decoupled_weight_decay_is_added_after_momentum_and_can_exempt_bn_and_bias():
    (u1, u2) = _one_update("decoupled", exclude=True)
    # kernel: -lr * (g + wd * w) = -0.1 * 2 at step 1; step 2: -0.1 * (0.9 * 1 + 1 + 0.5 * 1.8)
    assert u1["conv"]["kernel"] == pytest.approx(-0.2)
    assert u2["conv"]["kernel"] == pytest.approx(-0.28)
    # bias: no decay at all, plain momentum.
    assert u1["bn"]["bias"] == pytest.approx(-0.1)
    assert u2["bn"]["bias"] == pytest.approx(-0.19)


def test_nesterov_momentum_matches_pytorch_formula():
    (u1, _) = _one_update("l2", exclude=True, nesterov=True)
    # buf = g; update = g + momentum * buf = 1.9 (bias, no decay)
    assert u1["bn"]["bias"] == pytest.approx(-0.19)


def test_weight_decay_mask_selects_kernels_only():
    mask = optim.weight_decay_mask({"a": {"kernel": 1, "bias": 2, "scale": 3}})
    assert mask == {"a": {"kernel": True, "bias": False, "scale": False}}


def test_gradient_clipping():
    c = base_config().optimizer
    c.weight_decay, c.momentum, c.grad_clip_norm = 0.0, 0.0, 1.0
    tx = optim.build_optimizer(c, optax.constant_schedule(1.0))
    updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init({"w": jnp.zeros(2)}))
    np.testing.assert_allclose(updates["w"], [-0.6, -0.8], rtol=1e-6)


def test_weight_decay_mask_reads_the_leaf_name_at_any_depth():
    params = {"stage1_block1": {"conv1": {"kernel": 1}, "bn1": {"scale": 2, "bias": 3}},
              "head": {"kernel": 4, "bias": 5}}
    assert optim.weight_decay_mask(params) == {
        "stage1_block1": {"conv1": {"kernel": True}, "bn1": {"scale": False, "bias": False}},
        "head": {"kernel": True, "bias": False}}


def test_describe_schedule_lists_the_key_steps():
    c = schedule_config(unit="steps", length=100, boundaries=(40, 80), base_lr=0.1,
                        base_batch_size=256)
    text = optim.describe_schedule(c, 10, 256)
    steps = [int(line.split()[1].replace(",", "")) for line in text.splitlines()[1:]]
    assert steps == [0, 39, 40, 79, 80, 99]
    assert "100 steps = 10.00 epochs of 10 steps (global batch 256); peak lr 0.1" in text
    assert "step        40 (epoch     4.00): lr 0.01" in text
    c = schedule_config(name="cosine", unit="steps", length=100, warmup=10, base_lr=0.1)
    steps = [int(line.split()[1].replace(",", "")) for line in
             optim.describe_schedule(c, 10, 256).splitlines()[1:]]
    assert steps == [0, 10, 25, 50, 75, 99]


def test_constant_schedule_and_linear_warmup_before_piecewise():
    c = schedule_config(name="constant", unit="steps", length=50, base_lr=0.2, base_batch_size=256)
    assert lrs(c, [0, 49]) == pytest.approx([0.2, 0.2])
    c = schedule_config(unit="epochs", length=10, boundaries=(5,), warmup=1, warmup_mode="linear",
                        base_lr=0.1)
    # 100 steps per epoch: 0 -> 0.1 over steps 0..99 (absolute boundaries), then 0.01 from 500.
    assert lrs(c, [0, 50, 99, 100, 499, 500]) == pytest.approx([0.0, 0.05, 0.099, 0.1, 0.1, 0.01])


def test_linear_scaling_rule_and_epoch_rounding():
    c = schedule_config(unit="epochs", length=2.5, base_lr=0.1, base_batch_size=256)
    assert optim.peak_learning_rate(c, 512) == pytest.approx(0.2)
    assert optim.total_steps(c, 3) == 8  # round(7.5) half to even
    assert optim.total_steps(schedule_config(unit="steps", length=7.0), 3) == 7


def test_describe_in_one_line_names_every_choice():
    o = base_config().optimizer
    c = schedule_config(unit="epochs", boundaries=(30, 60), base_lr=0.1, base_batch_size=256)
    assert optim.describe_in_one_line(c, o, 512) == (
        "piecewise lr 0.2, x0.1 at epochs 30, 60; SGD momentum 0.9, weight decay 0.0001 (l2)")
    c = schedule_config(name="cosine", unit="steps", warmup=500, warmup_mode="constant",
                        base_lr=0.1)
    o.nesterov, o.weight_decay, o.weight_decay_mode = True, 5e-5, "decoupled"
    o.exclude_bn_and_bias, o.grad_clip_norm = True, 2.5
    assert optim.describe_in_one_line(c, o, 256) == (
        "cosine lr 0.1 after 500 steps of constant warm-up decaying to 0; SGD momentum 0.9 "
        "(Nesterov), weight decay 5e-05 (decoupled, kernels only), gradients clipped to norm 2.5")
    c = schedule_config(name="constant", base_lr=0.1, boundaries=(15.0,))
    o = base_config().optimizer
    assert optim.describe_in_one_line(c, o, 256) == (
        "constant lr 0.1; SGD momentum 0.9, weight decay 0.0001 (l2)")
    c = schedule_config(boundaries=())
    assert optim.describe_in_one_line(c, o, 256).startswith("piecewise lr 0.1; SGD")


def test_describe_schedule_lists_only_steps_of_the_run():
    """Boundaries at step 0 and at the run's end add no step before 0 or after the last one."""
    c = schedule_config(unit="steps", length=100, boundaries=(0, 100), base_lr=0.1)
    lines = optim.describe_schedule(c, 10, 256).splitlines()[1:]
    assert [int(line.split()[1]) for line in lines] == [0, 99]
    assert all(line.endswith("lr 0.01") for line in lines)


def test_cosine_schedule_whose_warmup_is_the_whole_run():
    """A warm-up as long as the run (a short debugging run) leaves no step to decay over: the
    linear ramp 0 -> lr over the run's steps, no error."""
    c = schedule_config(name="cosine", unit="steps", length=10, warmup=10, base_lr=0.1)
    assert lrs(c, [0, 5, 9], batch=256) == pytest.approx([0.0, 0.05, 0.09])


def _two_updates(**optimizer_fields):
    """Two updates of {"conv": kernel 2, "head": bias 2} with gradients 1, L2 decay 0.5, momentum
    0.9 and lr 0.1 (the numbers of _one_update), under `optimizer_fields`; the optimizer state."""
    c = base_config().optimizer
    c.weight_decay, c.momentum = 0.5, 0.9
    c.update(optimizer_fields)
    tx = optim.build_optimizer(c, optax.constant_schedule(0.1))
    params = {"conv": {"kernel": jnp.array(2.0)}, "head": {"bias": jnp.array(2.0)}}
    grads = jax.tree.map(jnp.ones_like, params)
    state = tx.init(params)
    u1, state = tx.update(grads, state, params)
    u2, state = tx.update(grads, state, optax.apply_updates(params, u1))
    return jax.tree.map(float, (u1, u2)), state


def test_backbone_lr_multiplier_scales_every_update_but_the_classifiers():
    (u1, u2), _ = _two_updates(backbone_lr_multiplier=0.1)
    # head: as test_l2_weight_decay_enters_the_gradient_before_momentum, -0.2 then -0.37.
    assert (u1["head"]["bias"], u2["head"]["bias"]) == (pytest.approx(-0.2), pytest.approx(-0.37))
    # backbone at lr 0.01: -0.02; then w = 1.98, buf = 0.9 * 2 + (1 + 0.5 * 1.98) = 3.79 -> -0.0379
    assert u1["conv"]["kernel"] == pytest.approx(-0.02)
    assert u2["conv"]["kernel"] == pytest.approx(-0.0379)


def test_frozen_backbone_gets_zero_updates_and_no_optimizer_state():
    (u1, u2), state = _two_updates(freeze_backbone=True)
    assert u1["conv"]["kernel"] == u2["conv"]["kernel"] == 0.0
    assert (u1["head"]["bias"], u2["head"]["bias"]) == (pytest.approx(-0.2), pytest.approx(-0.37))
    trace = state.inner_states["train"].inner_state[1].trace  # (decay, momentum, lr)
    assert float(trace["head"]["bias"]) == pytest.approx(3.7)  # 0.9 * 2 + (1 + 0.5 * 1.8)
    assert isinstance(trace["conv"]["kernel"], optax.MaskedNode)  # no buffer for the backbone


def test_backbone_mask_is_everything_but_the_classifier():
    params = {"stem_conv": {"kernel": 1}, "stage1_block1": {"bn1": {"scale": 2}},
              "head": {"kernel": 3, "bias": 4}}
    assert optim.backbone_mask(params) == {"stem_conv": {"kernel": True},
                                           "stage1_block1": {"bn1": {"scale": True}},
                                           "head": {"kernel": False, "bias": False}}


def _optax_schedule(c, steps_per_epoch, batch):
    """The schedule as optax's own constructors build it from Python numbers (constants)."""
    to_steps = (lambda v: int(round(v * steps_per_epoch))) if c.unit == "epochs" else int
    lr, warmup = optim.peak_learning_rate(c, batch), to_steps(c.warmup)
    if c.name == "piecewise":
        main = optax.piecewise_constant_schedule(
            lr, {to_steps(b): c.decay_factor for b in c.boundaries})
    elif c.name == "cosine":
        main = optax.cosine_decay_schedule(lr, max(1, to_steps(c.length) - warmup))
    else:
        main = optax.constant_schedule(lr)
    if not warmup:
        return main
    ramp = (optax.linear_schedule(0.0, lr, warmup) if c.warmup_mode == "linear"
            else optax.constant_schedule(lr * c.warmup_factor))
    if c.name == "cosine":
        return optax.join_schedules([ramp, main], [warmup])
    return lambda step: jnp.where(step < warmup, ramp(step), main(step))


SCHEDULES = {
    "paper cifar, constant warm-up": dict(unit="steps", length=640, boundaries=(320, 480),
                                          base_lr=0.1, warmup=40, warmup_mode="constant",
                                          warmup_factor=0.1),
    "imagenet epochs": dict(unit="epochs", length=9, boundaries=(3, 6, 8), base_lr=0.1),
    "cosine, linear warm-up": dict(name="cosine", unit="epochs", length=7, warmup=2, base_lr=0.3),
    "cosine, no warm-up": dict(name="cosine", unit="steps", length=333, base_lr=0.05),
    "constant, linear warm-up": dict(name="constant", unit="steps", length=50, warmup=7),
}


@pytest.mark.parametrize("fields", SCHEDULES.values(), ids=SCHEDULES.keys())
def test_schedule_from_arguments_equals_optax_from_constants(fields):
    """The train step computes the schedule from arguments (traced); optax's constructors take
    Python numbers, which become constants of the program: the same float32 values at every
    step, but for the cosine, whose division by its length XLA may turn into a multiplication by
    the reciprocal when the length is a constant: within 2 ulps of the peak there."""
    c = schedule_config(**fields)
    steps_per_epoch, batch = 100, 512
    steps = jnp.arange(optim.total_steps(c, steps_per_epoch) + 3, dtype=jnp.int32)
    arguments = optim.schedule_arguments(c, steps_per_epoch, batch)
    ours = jax.jit(lambda a, s: jax.vmap(optim.schedule_from_arguments(c, a))(s))(arguments, steps)
    theirs = jax.jit(jax.vmap(_optax_schedule(c, steps_per_epoch, batch)))(steps)
    ulps = 2 if c.name == "cosine" else 0
    np.testing.assert_allclose(np.asarray(ours, np.float32), np.asarray(theirs, np.float32),
                               rtol=0, atol=ulps * np.spacing(arguments["peak"]))


def test_runs_differing_only_in_schedule_numbers_or_seed_share_one_compiled_step():
    """The schedule's numbers and the augmentation's key are arguments of the train step, not
    constants in it: two runs with other rates, boundaries, lengths, warm-ups and seeds lower to
    the same program (so the persistent compilation cache serves the second), and a different
    number of boundaries does not."""
    from test_on_device import digits_config

    from resnet_jax.experiment import build_experiment

    def program(seed=0, **schedule):
        c = digits_config()
        c.seed = seed
        c.schedule.update(schedule)
        exp = build_experiment(c, jax.devices()[:1])
        feeds = jax.tree.map(lambda x: x[None], next(exp.pipeline.train_feed(0)))
        return exp.multi_step.lower(exp.abstract_train_state(), exp.device_data(),
                                    feeds).as_text()

    first = program(base_lr=0.1, boundaries=(2.0, 3.0), length=4.0, warmup=1.0)
    assert program(base_lr=0.7, boundaries=(9.0, 30.0), length=50.0, warmup=0.0, seed=7) == first
    assert program(base_lr=0.1, boundaries=(2.0,), length=4.0, warmup=1.0) != first
