"""The train state and the pure, jit-able train and eval steps.

TrainState leaves: step int32 [], params and batch_stats float32 trees, opt_state. EmaTrainState
(config.ema_decay) adds ema = {"params", "batch_stats"}: their exponential moving averages; a run
without EMA keeps the plain TrainState, so its checkpoints hold exactly the arrays they always did.
Train batches: {"image": float [B, H, W, C], "label": int32 [B]}. Eval batches add "mask": bool [B]
and may carry several views of each image: "image" [B, V, H, W, C] (V crops) and/or
"image_<size>" keys (several scales); see make_eval_step.
Every reduction over the batch is written over the global batch; under jit with the batch sharded on
the mesh, XLA inserts the cross-device reductions, so the code is the same on 1 device or a pod.
"""

from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, image_shape,
                       seed: int) -> TrainState:
    """A fresh state: the model initialised from `seed` on one image of `image_shape` (H, W, C)."""
    # The first key of a split of the seed's key: the initial weights of every earlier version.
    init_rng = jax.random.split(jax.random.PRNGKey(seed))[0]
    variables = model.init(init_rng, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params))


@flax.struct.dataclass
class EmaTrainState(TrainState):
    ema: Any  # {"params": ..., "batch_stats": ...}, float32 trees shaped as the state's own


def with_ema(state: TrainState) -> EmaTrainState:
    """`state` with its EMA (re)started at copies of its params and batch_stats. Call it on the
    initial state, and again after loading other weights into it (e.g. pretrained ones)."""
    fields = {name: getattr(state, name) for name in ("step", "params", "batch_stats", "opt_state")}
    ema = jax.tree.map(jnp.copy, {"params": state.params, "batch_stats": state.batch_stats})
    return EmaTrainState(**fields, ema=ema)


def has_ema(state: TrainState) -> bool:
    """Whether `state` carries an EMA of its weights (an EmaTrainState)."""
    return isinstance(state, EmaTrainState)


def ema_weights(state: EmaTrainState) -> EmaTrainState:
    """`state` with its params and batch_stats replaced by their EMA (the same pytree structure,
    so a step compiled for the state takes it as is): what evaluating the EMA weights uses."""
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def make_ema_step(train_step: Callable, decay: float) -> Callable:
    """train_step followed by the EMA update (optax.incremental_update), for EmaTrainStates:
    ema <- decay * ema + (1 - decay) * new, where new is the step's new params (after the
    optimizer update) and new batch_stats, leaf by leaf in float32. (optax.ema would average the
    optimizer's update stream inside its chain, which never sees the BatchNorm statistics.)"""

    def ema_step(state: EmaTrainState, batch) -> tuple[EmaTrainState, dict]:
        state, metrics = train_step(state, batch)
        new = {"params": state.params, "batch_stats": state.batch_stats}
        return state.replace(ema=optax.incremental_update(new, state.ema, 1.0 - decay)), metrics

    return ema_step


def _topk_correct(logits: jnp.ndarray, labels: jnp.ndarray, k: int) -> jnp.ndarray:
    """float32 [B]: 1 where the label is among the k highest logits (k capped at the class count)."""
    k = min(k, logits.shape[-1])
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    # Rank = number of classes scoring strictly higher than the label (ties count as correct).
    rank = jnp.sum(logits > label_logit, axis=-1)
    return (rank < k).astype(jnp.float32)


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: float) -> jnp.ndarray:
    """float32 [B] softmax cross-entropy against one-hot labels smoothed by `label_smoothing`."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def split_micro_batches(batch, accumulation_steps: int, batch_shards: int):
    """Leaves [B, ...] -> [k, B / k, ...], k = accumulation_steps: micro-batch j holds the j-th of k
    consecutive slices of each of the `batch_shards` equal shards of the batch, so that on a mesh of
    that many devices every micro-batch is sharded as the batch is, and no row changes device.
    A BatchNorm group size g that divides B / (batch_shards * k) thus groups the same g consecutive
    rows in a micro-batch as in the whole batch."""

    def split(x):
        shards = x.reshape((batch_shards, accumulation_steps, -1) + x.shape[1:])
        return jnp.swapaxes(shards, 0, 1).reshape((accumulation_steps, -1) + x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, label_smoothing: float = 0.0,
                    frozen: Optional[Callable[[Any], Any]] = None, accumulation_steps: int = 1,
                    batch_shards: int = 1, unroll_micro_batches: bool = False) -> Callable:
    """train_step(state, batch) -> (state, metrics); metrics are float32 scalars:
    loss (cross-entropy, without weight decay), top1, top5, lr, grad_norm; and "finite", a dict of
    bool scalars: whether the loss, the gradients, the new parameters and the new BatchNorm
    statistics ("loss", "gradients", "parameters", "bn_statistics") are all finite.

    `frozen` (a linear probe): params -> tree of Python bools, True for the parameters that stay
    exactly as they are (optim.backbone_mask). Then the forward pass runs BatchNorm in inference
    mode, the statistics are left as they are, and no gradient flows into the frozen parameters.

    With accumulation_steps k > 1 the batch is split into k micro-batches (split_micro_batches over
    `batch_shards`, the devices the batch is sharded on) run one after another in a scan, each from
    the step's parameters and running statistics; the step applies one optimizer update with the
    mean of their gradients and keeps the mean of their updated BatchNorm statistics. The loss, the
    gradients and the metrics are thus those of the whole batch with BatchNorm over each
    micro-batch; as the running-average update is linear in the batch statistic, the mean of the
    k updates, m * running + (1 - m) * mean of the k micro-batch statistics, is the one update of
    the whole batch normalised in groups, whose statistic is the mean of its groups'. With
    model.bn_group_size = B / (batch_shards * k) a step therefore equals one step over the whole
    batch with groups of that size, within float32 rounding. As a loop, the scan keeps the
    activations of one micro-batch at a time; `unroll_micro_batches` unrolls it for XLA:CPU, which
    runs convolutions in a loop body several times slower (jax-ml/jax#12868) and leaves the order
    of the unrolled micro-batches to its scheduler.
    """

    def loss_fn(params, batch_stats, batch):
        if frozen is None:
            logits, new_vars = model.apply({"params": params, "batch_stats": batch_stats},
                                           batch["image"], train=True, mutable=["batch_stats"])
            batch_stats = new_vars["batch_stats"]
        else:
            params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params,
                                  frozen(params))
            logits = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                                 train=False)
        loss = jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))
        return loss, (logits, batch_stats)

    def batch_gradients(params, batch_stats, batch) -> tuple[Any, Any, dict]:
        """(mean gradients, updated BatchNorm statistics, {loss, top1, top5} means) of a batch."""
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, new_stats)), grads = grad_fn(params, batch_stats, batch)
        means = {"loss": loss, "top1": jnp.mean(_topk_correct(logits, batch["label"], 1)),
                 "top5": jnp.mean(_topk_correct(logits, batch["label"], 5))}
        return grads, new_stats, means

    def accumulated_gradients(params, batch_stats, batch) -> tuple[Any, Any, dict]:
        """batch_gradients of the whole batch, as the mean over its k micro-batches."""

        def add_micro_batch(sums, micro_batch):
            grads, new_stats, means = batch_gradients(params, batch_stats, micro_batch)
            return jax.tree.map(jnp.add, sums, (grads, new_stats)), means

        zeros = jax.tree.map(jnp.zeros_like, (params, batch_stats))
        micro_batches = split_micro_batches(batch, accumulation_steps, batch_shards)
        sums, means = jax.lax.scan(add_micro_batch, zeros, micro_batches,
                                   unroll=unroll_micro_batches)
        grads, new_stats = jax.tree.map(lambda total: total / accumulation_steps, sums)
        return grads, new_stats, jax.tree.map(jnp.mean, means)

    gradients = batch_gradients if accumulation_steps == 1 else accumulated_gradients

    def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
        grads, batch_stats, means = gradients(state.params, state.batch_stats, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if frozen is not None:  # the old leaves themselves: p + 0 would turn -0.0 into +0.0,
            params = jax.tree.map(lambda new, old, f: old if f else new, params, state.params,
                                  frozen(params))
            batch_stats = state.batch_stats  # and a mean over micro-batches may round
        metrics = {
            **means,
            "lr": jnp.asarray(schedule(state.step), jnp.float32),
            "grad_norm": optax.tree.norm(grads),
        }
        norms = {"loss": means["loss"], "gradients": metrics["grad_norm"],
                 "parameters": optax.tree.norm(params), "bn_statistics": optax.tree.norm(batch_stats)}
        metrics["finite"] = {name: jnp.isfinite(x) for name, x in norms.items()}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_multi_step(train_step: Callable, batch_from_feed: Callable) -> Callable:
    """multi_step(state, arrays, feeds) -> (state, metrics): one train step per feed, in order, as
    one computation, so one dispatch runs them all.

    `feeds`' leaves have a leading steps axis n; the batch of each step is
    batch_from_feed(arrays, feed, state.step) (state.step: the step's 0-based index); metrics are
    train_step's, each stacked to [n]. n > 1 is a scan; n = 1 is the step itself, without a loop
    (XLA:CPU runs convolutions inside a loop body several times slower: jax-ml/jax#12868).
    """

    def multi_step(state: TrainState, arrays, feeds) -> tuple[TrainState, dict]:
        def body(state, feed):
            return train_step(state, batch_from_feed(arrays, feed, state.step))

        if jax.tree.leaves(feeds)[0].shape[0] == 1:
            state, metrics = body(state, jax.tree.map(lambda x: x[0], feeds))
            return state, jax.tree.map(lambda x: x[None], metrics)
        return jax.lax.scan(body, state, feeds)

    return multi_step


def make_eval_step(model: nn.Module) -> Callable:
    """eval_step(state, batch) -> float32 sums over the unmasked rows of the batch.

    The batch holds "label" int32 [B], "mask" bool [B] and one or more image keys: "image" and/or
    "image_<size>" (multi-scale), each [B, H, W, C] (one view per example) or [B, K, H, W, C] (K
    views, e.g. 10 crops). The prediction is the mean of the softmax over all views of all keys; the
    loss is the cross-entropy of that mean prediction (one view: the usual cross-entropy).
    Sums: loss, top1, top5, count [] and, per class c, class_top1 and class_count [num_classes].
    """

    def log_probs(state: TrainState, images: jnp.ndarray) -> jnp.ndarray:
        """[B, V, num_classes] log-softmax of each of the V views of [B, (V,) H, W, C] images."""
        views = images.reshape((-1,) + images.shape[-3:])
        logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, views,
                             train=False)
        return jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(
            images.shape[:1] + (-1, logits.shape[-1]))

    def eval_step(state: TrainState, batch) -> dict:
        keys = sorted(k for k in batch if k == "image" or k.startswith("image_"))
        views = jnp.concatenate([log_probs(state, batch[k]) for k in keys], axis=1)
        # log of the mean softmax over views, computed in log space.
        mean_log_prob = jax.nn.logsumexp(views, axis=1) - jnp.log(views.shape[1])
        labels = batch["label"]
        num_classes = mean_log_prob.shape[-1]
        mask = batch["mask"].astype(jnp.float32)
        nll = -jnp.take_along_axis(mean_log_prob, labels[:, None], axis=-1)[:, 0]
        top1 = _topk_correct(mean_log_prob, labels, 1) * mask
        one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
        return {
            "loss": jnp.sum(nll * mask),
            "top1": jnp.sum(top1),
            "top5": jnp.sum(_topk_correct(mean_log_prob, labels, 5) * mask),
            "count": jnp.sum(mask),
            "class_top1": top1 @ one_hot,
            "class_count": mask @ one_hot,
        }

    return eval_step
