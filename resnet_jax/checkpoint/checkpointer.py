"""The Orbax wiring: `Checkpointer` saves, lists, restores and sets aside the checkpoints of one
directory through Orbax's public CheckpointManager API, and writes each step's integrity record.

Orbax writes and commits a step by itself (locally a temporary folder renamed; on gs:// a
commit_success.txt): when `wait_until_finished` returns, the step is committed. A background thread
per save waits for that, then process 0 writes the step's integrity record (integrity.py). A
failure of the save or of its record fails the save: the next `save`, `wait` or `close` raises
StorageError naming the path and cause.
"""

import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

import resnet_jax.checkpoint.integrity as integrity
from resnet_jax import storage
from resnet_jax.checkpoint.compatibility import array_shapes, check_compatible
from resnet_jax.errors import DamagedCheckpointError, StorageError, UnverifiedCheckpointError

BEST_METRIC = "eval_top1"
# Orbax deletes the steps beyond the latest `keep` right after it commits a new one, before that
# one's integrity record is written. A save starts only after the previous save's record is
# written (`save` waits for it), so with two or more kept the newest verified checkpoint survives
# until a newer one is verified; with one, a kill in that window would leave nothing good.
MIN_KEEP = 2
LISTING_ATTEMPTS = 6
SET_ASIDE_NOTE = "README.txt"
SET_ASIDE_TEXT = ("Checkpoints that a resuming run found damaged or unverified, moved here as "
                  "<step>.<unix time> instead of being deleted. Inspect or evaluate one with\n"
                  "  python eval.py --checkpoint <this folder>/<step>.<time> "
                  "--allow_unverified_checkpoint\nor delete it.\n")


def _read_listing(read: Callable[[], Any]) -> Any:
    """`read()`, an Orbax call that lists the step folders and then reads each one's metadata,
    repeated while a folder vanishes between the two: another process moved or deleted it (a
    resume setting a step aside, the run's retention policy; neither is atomic on gs://).
    Orbax raises FileNotFoundError or NotADirectoryError then; the last attempt's error is raised.
    """
    for attempt in range(LISTING_ATTEMPTS):
        try:
            return read()
        except (FileNotFoundError, NotADirectoryError):
            if attempt == LISTING_ATTEMPTS - 1:
                raise
            time.sleep(0.05 * 2 ** attempt)


class Restored(NamedTuple):
    state: Any
    meta: dict
    checked: str  # VERIFIED, or "unverified: <reason>" when allowed


class Checkpointer:
    """A CheckpointManager keeping the latest `keep` (at least MIN_KEEP) checkpoints and the best
    by `best_metric` (eval top-1 by default; "eval_ema_top1": that of the EMA weights), with an
    integrity record per step. Constructing one changes nothing outside it."""

    def __init__(self, directory: storage.PathLike, keep: int = 3, async_save: bool = True,
                 read_only: bool = False, best_metric: str = BEST_METRIC):
        if keep < MIN_KEEP:
            raise ValueError(f"keep={keep}: at least {MIN_KEEP} checkpoints must be kept")
        self.directory = storage.path(directory)
        self.async_save = async_save
        self.best_metric = best_metric
        self._recorder: Optional[threading.Thread] = None
        self._error: Optional[StorageError] = None
        # A StorageError was raised; close() does not raise it again, nor close the manager. The
        # writes that the failed save orphaned may crash the interpreter's teardown: cli.fail ends
        # the process with os._exit, which skips it; a library caller keeps its interpreter.
        self._failed = False
        policy = AnyPreservationPolicy([
            LatestN(keep),
            BestN(get_metric_fn=lambda m: m[best_metric], n=1,
                  keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=True,
            cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only)
        try:
            self.manager = _read_listing(lambda: ocp.CheckpointManager(
                self.directory, options=options,
                item_handlers={"state": ocp.StandardCheckpointHandler(),
                               "meta": ocp.JsonCheckpointHandler()}))
        except Exception as e:  # noqa: BLE001 (creating the folder on a full disk, a bad bucket)
            raise StorageError(self.directory, storage.cause(e)) from e

    def step_dir(self, step: int):
        return self.directory / str(step)

    def set_aside_dir(self):
        """Where damaged and unverified checkpoints are moved when resuming."""
        return self.directory.parent / f"{self.directory.name}_set_aside"

    def _record(self, step: int) -> None:
        """Background thread of one save: wait for Orbax to commit `step`, then (process 0) write
        its integrity record. Failures are kept for the main thread to raise."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 (TensorStore, asyncio and OS errors alike)
            self._error = StorageError(self.step_dir(step), storage.cause(e))
            return
        if jax.process_index() != 0:
            return
        try:
            integrity.write_record(self.step_dir(step))
        except StorageError as e:
            self._error = e

    def _finish_pending(self) -> None:
        """Wait for the save in flight and its record; raise StorageError if either failed."""
        if self._recorder is not None:
            self._recorder.join()
            self._recorder = None
        if self._error is not None:
            error, self._error = self._error, None
            self._failed = True
            raise error

    def save(self, step: int, state: Any, meta: dict, metrics: Optional[dict] = None) -> None:
        """Start saving (asynchronously unless async_save=False) once the previous save and its
        record are complete; `metrics` holding the best metric make it a candidate for best.
        Raises StorageError if this or the previous save failed."""
        if metrics is not None and self.best_metric not in metrics:
            metrics = None
        self._finish_pending()
        try:
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            meta=ocp.args.JsonSave(meta)),
                              metrics=metrics, force=True)
        except Exception as e:  # noqa: BLE001
            self._failed = True
            raise StorageError(self.step_dir(step), storage.cause(e)) from e
        self._recorder = threading.Thread(target=self._record, args=(step,),
                                          name=f"checkpoint-record-{step}", daemon=True)
        self._recorder.start()
        if not self.async_save:
            self._finish_pending()

    def verify(self, step: int, allow_unverified: bool = False) -> str:
        """integrity.verify for checkpoint `step`: VERIFIED, or raises DamagedCheckpointError or
        UnverifiedCheckpointError (unless `allow_unverified`: then "unverified: <reason>")."""
        return integrity.verify(step, self.step_dir(step), allow_unverified)

    def check_compatible(self, step: int, abstract_state: Any) -> None:
        """Raise IncompatibleCheckpointError naming the first saved array whose path or shape
        differs from `abstract_state` (e.g. a config naming another model)."""
        try:
            saved = array_shapes(self.manager.item_metadata(step).state)
        except Exception as e:  # noqa: BLE001 (Orbax reports unreadable metadata many ways)
            raise DamagedCheckpointError(step, self.step_dir(step) / "state",
                                         f"unreadable array metadata ({storage.cause(e)})") from e
        if not saved:  # e.g. being deleted by the retention policy (not atomic on gs://)
            raise DamagedCheckpointError(step, self.step_dir(step) / "state",
                                         "its array metadata lists no arrays")
        check_compatible(step, saved, abstract_state)

    def restore(self, step: int, target: Union[Any, Callable[[dict], Any]],
                allow_unverified: bool = False) -> Restored:
        """Checkpoint `step`, verified against its record, placed as the abstract state `target`
        (or `target(meta)`, for a target built from the stored config) with its shardings, so a
        checkpoint written on N devices restores on M.

        Raises DamagedCheckpointError for files that are altered, missing or unreadable,
        UnverifiedCheckpointError (unless `allow_unverified`) and IncompatibleCheckpointError for
        saved arrays that do not fit the target.
        """
        checked = self.verify(step, allow_unverified)
        meta = self.restore_meta(step)
        abstract_state = target(meta) if callable(target) else target
        self.check_compatible(step, abstract_state)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:  # noqa: BLE001 (TensorStore and Orbax raise many types)
            raise DamagedCheckpointError(step, self.step_dir(step) / "state",
                                         f"it cannot be restored: {storage.cause(e)}") from e
        return Restored(restored.state, meta, checked)

    def restore_meta(self, step: int) -> dict:
        """The meta dict of checkpoint `step` (raises DamagedCheckpointError if unreadable)."""
        try:
            return self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # noqa: BLE001
            raise DamagedCheckpointError(step, self.step_dir(step) / "meta",
                                         f"unreadable ({storage.cause(e)})") from e

    def resume_candidates(self, allow_unverified: bool
                          ) -> tuple[Optional[int], list[Union[DamagedCheckpointError,
                                                               UnverifiedCheckpointError]]]:
        """(newest step that may be resumed from or None, the problems of the newer steps).

        Steps are checked newest first until one verifies (or, with `allow_unverified`, is at
        worst unverified); nothing is moved.
        """
        problems = []
        for step in reversed(self.all_steps()):
            try:
                self.verify(step, allow_unverified)
                return step, problems
            except (DamagedCheckpointError, UnverifiedCheckpointError) as e:
                problems.append(e)
        return None, problems

    def set_aside(self, step: int):
        """Move checkpoint `step` to `<directory>_set_aside/<step>.<unix time>`; returns the new
        path. Raises StorageError when the move fails."""
        folder = self.set_aside_dir()
        target = folder / f"{step}.{int(time.time())}"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # On gs:// a folder exists only while it holds an object, and a move needs its
            # destination's folder to exist: the note makes it exist (and says what it holds).
            if not (folder / SET_ASIDE_NOTE).exists():
                storage.write_atomic(folder / SET_ASIDE_NOTE, SET_ASIDE_TEXT)
            self.step_dir(step).rename(target)
        except Exception as e:  # noqa: BLE001
            raise StorageError(target, storage.cause(e)) from e
        self.reload()
        return target

    def reload(self) -> None:
        """Re-read the step list from disk (to see checkpoints another process has written or
        removed). Raises StorageError if the folder keeps changing under the listing."""
        try:
            _read_listing(self.manager.reload)
        except OSError as e:
            raise StorageError(self.directory, storage.cause(e)) from e

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def newest_good_step(self) -> Optional[int]:
        """The newest checkpoint that verifies, after any save in flight completed; None if none."""
        self.wait()
        return self.resume_candidates(allow_unverified=False)[0]

    def wait(self) -> None:
        """Block until every started save and its record are complete; raise StorageError if
        one failed."""
        self._finish_pending()

    def close(self) -> None:
        """Wait for the save in flight, then release Orbax's resources; raise StorageError if a
        save failed and that was not raised yet.

        After a failed save the manager is left open: closing it closes Orbax's event loop under
        the failed save's pending writes, whose callbacks then print hundreds of tracebacks
        ("Event loop is closed", "Task exception was never retrieved") until the process exits.
        """
        failure = None
        try:
            self._finish_pending()
        except StorageError as e:
            failure = e
        if not self._failed:
            try:
                self.manager.close()
            except Exception as e:  # noqa: BLE001
                failure = failure or StorageError(self.directory, storage.cause(e))
        if failure is not None:
            raise failure
