"""Evaluation of a train state over a whole eval split, each example counted exactly once."""

import jax
import jax.numpy as jnp

from resnet_jax import parallel


def evaluate(exp, state) -> dict[str, float]:
    """loss, top1, top5 (fractions) and count over the whole eval split, each example once."""
    totals = None
    for local in exp.pipeline.eval_batches():
        sums = exp.eval_step(state, parallel.global_batch(local, exp.mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals["count"])
    return {"loss": float(totals["loss"]) / count, "top1": float(totals["top1"]) / count,
            "top5": float(totals["top5"]) / count, "count": count}
