"""Orbax checkpoints: asynchronous, atomic saves of the whole train state; last K kept plus the best.

Layout: `<directory>/<step>/{state, meta}`. `state` holds the TrainState pytree (step, params, BN
statistics, optimizer state, RNG key); `meta` (JSON) holds the data position, the config and the
metrics. A save is written to a temporary folder and renamed when complete, so a run killed mid-save
leaves the previous checkpoint as the latest; stale temporary folders are removed at start-up.
Restoring takes an abstract target whose shardings are those of the current mesh, so a checkpoint
written on N devices restores on M.
"""

from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

BEST_METRIC = "eval_top1"


class Checkpointer:
    """A CheckpointManager keeping the latest `keep` checkpoints and the best by eval top-1."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        policy = AnyPreservationPolicy([
            LatestN(keep),
            BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                  keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(
            directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def save(self, step: int, state: Any, meta: dict, metrics: Optional[dict] = None) -> None:
        """Start saving (asynchronously); `metrics` with eval_top1 make it a candidate for best."""
        if metrics is not None and BEST_METRIC not in metrics:
            metrics = None
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)),
                          metrics=metrics, force=True)

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """(state placed as `abstract_state`'s shardings, meta dict) of checkpoint `step`."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta

    def restore_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> Optional[int]:
        return self.manager.best_step()

    def wait(self) -> None:
        """Block until every started save is complete on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """jax.ShapeDtypeStruct tree (with shardings) describing `state`, for restoring into."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
