"""Evaluation inside the training loop: `evaluate` runs the eval step over the whole eval split,
each example counted exactly once. Offline evaluation (eval.py) is resnet_jax.offline_eval.
"""

from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax import parallel


def evaluate(exp, state, per_class: bool = False) -> dict[str, Any]:
    """loss, top1, top5 (fractions) and count over the whole eval split, each example once.

    With `per_class`, also "per_class_top1" (a list over classes; None for a class absent from the
    split) and "per_class_count" (ints).
    """
    totals = None
    arrays = exp.device_data()
    for local in exp.pipeline.eval_feed():
        sums = exp.eval_feed_step(state, arrays, parallel.global_batch(local, exp.mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    out = {"loss": float(totals["loss"]) / count, "top1": float(totals["top1"]) / count,
           "top5": float(totals["top5"]) / count, "count": count}
    if per_class:
        out["per_class_top1"] = [float(c / n) if n else None
                                 for c, n in zip(totals["class_top1"], totals["class_count"])]
        out["per_class_count"] = [int(n) for n in totals["class_count"]]
    return out
