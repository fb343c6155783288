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


def learning_rate_schedule(schedule_config, steps_per_epoch: int,
                           global_batch_size: int) -> optax.Schedule:
    """step (int) -> learning rate (float32) for the whole run, warm-up included."""
    c = schedule_config
    lr = peak_learning_rate(c, global_batch_size)
    total = total_steps(c, steps_per_epoch)
    warmup = _to_steps(c.warmup, c.unit, steps_per_epoch)
    if c.name == "piecewise":
        bounds = {_to_steps(b, c.unit, steps_per_epoch): c.decay_factor for b in c.boundaries}
        main = optax.piecewise_constant_schedule(lr, bounds)
    elif c.name == "cosine":
        main = optax.cosine_decay_schedule(lr, max(1, total - warmup))
    else:
        main = optax.constant_schedule(lr)
    if not warmup:
        return main
    if c.warmup_mode == "linear":
        ramp = optax.linear_schedule(0.0, lr, warmup)
    else:
        ramp = optax.constant_schedule(lr * c.warmup_factor)
    # Piecewise boundaries are absolute steps; cosine decays over what follows the warm-up.
    if c.name == "cosine":
        return optax.join_schedules([ramp, main], [warmup])
    return lambda step: jnp.where(step < warmup, ramp(step), main(step))


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
