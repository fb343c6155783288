"""Optax optimizers and learning-rate schedules built from the config's `schedule` and `optimizer`.

Lengths (`length`, `boundaries`, `warmup`) are in `schedule.unit`: "epochs" or "steps". The peak
learning rate follows the linear scaling rule: base_lr * global_batch_size / base_batch_size.

Weight decay:
  "l2"        the paper's L2 penalty, wd/2 * |w|^2 in the loss, i.e. wd * w added to the gradient
              before momentum (PyTorch's SGD weight_decay);
  "decoupled" wd * w added to the update after momentum, then scaled by the learning rate (SGDW).
With `exclude_bn_and_bias`, only convolution and dense kernels decay.

The backbone (every parameter but the classifier, "head"): `freeze_backbone` gives it no update
and no optimizer state (a linear probe); `backbone_lr_multiplier` scales its updates, i.e. its
learning rate (discriminative fine-tuning).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("piecewise", "cosine", "constant")
UNITS = ("epochs", "steps")
WARMUPS = ("linear", "constant")
WEIGHT_DECAY_MODES = ("l2", "decoupled")


def _to_steps(value: float, unit: str, steps_per_epoch: int) -> int:
    return int(round(value * steps_per_epoch)) if unit == "epochs" else int(value)


def total_steps(schedule_config, steps_per_epoch: int) -> int:
    """Number of training steps of the whole run."""
    return _to_steps(schedule_config.length, schedule_config.unit, steps_per_epoch)


def peak_learning_rate(schedule_config, global_batch_size: int) -> float:
    """base_lr scaled by the linear scaling rule."""
    return schedule_config.base_lr * global_batch_size / schedule_config.base_batch_size


def schedule_arguments(schedule_config, steps_per_epoch: int,
                       global_batch_size: int) -> dict[str, np.ndarray]:
    """The numbers of the learning-rate schedule, which the compiled train step takes as an
    argument rather than as constants of its program, so that runs differing only in them (the
    rate, the boundaries, the length, the warm-up) share one compiled step. Each schedule has only
    those it reads: "peak" (float32, the linearly scaled base_lr) and "warmup" (int32, steps);
    piecewise "boundaries" (int32 [number of distinct boundaries], steps, ascending) and
    "decay_factor" (float32); cosine "decay_steps" (float32, its length after the warm-up); a
    constant warm-up "warmup_lr" (float32). Products are taken in float64 before the one rounding
    to float32."""
    c = schedule_config
    peak = peak_learning_rate(c, global_batch_size)
    warmup = _to_steps(c.warmup, c.unit, steps_per_epoch)
    arguments = {"peak": np.float32(peak), "warmup": np.int32(warmup)}
    if c.name == "piecewise":
        boundaries = sorted({_to_steps(b, c.unit, steps_per_epoch) for b in c.boundaries})
        arguments.update(boundaries=np.asarray(boundaries, np.int32),
                         decay_factor=np.float32(c.decay_factor))
    elif c.name == "cosine":
        arguments["decay_steps"] = np.float32(max(1, total_steps(c, steps_per_epoch) - warmup))
    if c.warmup_mode == "constant":
        arguments["warmup_lr"] = np.float32(peak * c.warmup_factor)
    return arguments


# The schedules below compute what optax's piecewise_constant_schedule, cosine_decay_schedule and
# linear_schedule compute, operation for operation, from arguments that may be traced: optax's
# constructors check their arguments in Python (decay_steps > 0, scales >= 0,
# transition_steps <= 0), which a traced value cannot answer. The values are optax's, bit for bit,
# but the cosine's: XLA may turn optax's division by a constant length into a multiplication (up
# to 2 ulps of the peak).
def _piecewise(peak, boundaries, factor) -> optax.Schedule:
    def schedule(step):
        value = peak
        for i in range(boundaries.shape[0]):
            indicator = jnp.maximum(0.0, jnp.sign(boundaries[i] - step))
            value = value * indicator + (1 - indicator) * factor * value
        return value

    return schedule


def _cosine(peak, decay_steps) -> optax.Schedule:
    def schedule(step):
        step = jnp.minimum(step, decay_steps)
        return peak * (0.5 * (1 + jnp.cos(jnp.pi * step / decay_steps)))

    return schedule


def _linear_ramp(peak, steps) -> optax.Schedule:
    """0 at step 0 up to `peak` at `steps` (> 0 where it is used)."""

    def schedule(step):
        fraction = 1 - jnp.clip(step, 0, steps) / jnp.maximum(steps, 1)
        return -peak * fraction + peak

    return schedule


def schedule_from_arguments(schedule_config, arguments: dict) -> optax.Schedule:
    """step (int) -> learning rate (float32) for the whole run, warm-up included, from
    schedule_arguments (numpy or traced); the config gives only its form (name, warmup_mode)."""
    c, a = schedule_config, arguments
    if c.name == "piecewise":
        main = _piecewise(a["peak"], a["boundaries"], a["decay_factor"])
    elif c.name == "cosine":
        main = _cosine(a["peak"], a["decay_steps"])
    else:
        main = optax.constant_schedule(a["peak"])
    ramp = (_linear_ramp(a["peak"], a["warmup"]) if c.warmup_mode == "linear"
            else optax.constant_schedule(a["warmup_lr"]))
    # Piecewise boundaries are absolute steps; cosine decays over what follows the warm-up.
    if c.name == "cosine":
        return optax.join_schedules([ramp, main], [a["warmup"]])
    return lambda step: jnp.where(step < a["warmup"], ramp(step), main(step))


def learning_rate_schedule(schedule_config, steps_per_epoch: int,
                           global_batch_size: int) -> optax.Schedule:
    """step (int) -> learning rate (float32) for the whole run, warm-up included."""
    return schedule_from_arguments(
        schedule_config, schedule_arguments(schedule_config, steps_per_epoch, global_batch_size))


def weight_decay_mask(params) -> object:
    """True for convolution and dense kernels, False for BatchNorm scales and all biases."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


CLASSIFIER = "head"  # the top-level params module of every model's classifier (models/resnet.py)


def backbone_mask(params) -> object:
    """True for every parameter outside the classifier (the backbone), False for the classifier's."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[0].key != CLASSIFIER, params)


def build_optimizer(optimizer_config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD with momentum (optionally Nesterov), weight decay, optional global-norm clipping; the
    backbone frozen or its learning rate multiplied (see the module docstring)."""
    c = optimizer_config
    mask = weight_decay_mask if c.exclude_bn_and_bias else None
    decay = optax.add_decayed_weights(c.weight_decay, mask) if c.weight_decay else optax.identity()
    momentum = optax.trace(decay=c.momentum, nesterov=c.nesterov)
    parts = [optax.clip_by_global_norm(c.grad_clip_norm)] if c.grad_clip_norm else []
    parts += [decay, momentum] if c.weight_decay_mode == "l2" else [momentum, decay]
    parts.append(optax.scale_by_learning_rate(schedule))
    if c.backbone_lr_multiplier != 1:
        parts.append(optax.masked(optax.scale(c.backbone_lr_multiplier), backbone_mask))
    sgd = optax.chain(*parts)
    if not c.freeze_backbone:
        return sgd
    return optax.multi_transform(
        {"train": sgd, "frozen": optax.set_to_zero()},
        lambda params: jax.tree.map(lambda b: "frozen" if b else "train", backbone_mask(params)))


def describe_schedule(schedule_config, steps_per_epoch: int, global_batch_size: int) -> str:
    """Human-readable summary: run length and the learning rate at its key steps."""
    c = schedule_config
    fn = learning_rate_schedule(c, steps_per_epoch, global_batch_size)
    total = total_steps(c, steps_per_epoch)
    keys = {0, total - 1, _to_steps(c.warmup, c.unit, steps_per_epoch)}
    if c.name == "piecewise":
        for b in c.boundaries:
            s = _to_steps(b, c.unit, steps_per_epoch)
            keys |= {s - 1, s}
    elif c.name == "cosine":
        keys |= {total // 4, total // 2, 3 * total // 4}
    lines = [f"{total:,} steps = {total / steps_per_epoch:.2f} epochs of {steps_per_epoch:,} steps "
             f"(global batch {global_batch_size}); peak lr "
             f"{peak_learning_rate(c, global_batch_size):g}"]
    for s in sorted(k for k in keys if 0 <= k < total):
        lines.append(f"  step {s:>9,} (epoch {s / steps_per_epoch:8.2f}): lr {float(fn(s)):.6g}")
    return "\n".join(lines)


def describe_in_one_line(schedule_config, optimizer_config, global_batch_size: int) -> str:
    """The schedule and optimizer as one line of the start-up header, e.g. "piecewise lr 0.1, x0.1
    at epochs 30, 60; SGD momentum 0.9, weight decay 0.0001 (l2)"."""
    c, o = schedule_config, optimizer_config
    line = f"{c.name} lr {peak_learning_rate(c, global_batch_size):g}"
    if c.warmup:
        line += f" after {c.warmup:g} {c.unit} of {c.warmup_mode} warm-up"
    if c.name == "piecewise" and c.boundaries:
        line += f", x{c.decay_factor:g} at {c.unit} {', '.join(f'{b:g}' for b in c.boundaries)}"
    elif c.name == "cosine":
        line += " decaying to 0"
    kernels_only = ", kernels only" if o.exclude_bn_and_bias else ""
    line += (f"; SGD momentum {o.momentum:g}{' (Nesterov)' if o.nesterov else ''}, weight decay "
             f"{o.weight_decay:g} ({o.weight_decay_mode}{kernels_only})")
    if o.grad_clip_norm:
        line += f", gradients clipped to norm {o.grad_clip_norm:g}"
    if o.freeze_backbone:
        line += "; backbone frozen (a linear probe: only the classifier trains)"
    elif o.backbone_lr_multiplier != 1:
        line += f"; backbone lr x{o.backbone_lr_multiplier:g}"
    return line
