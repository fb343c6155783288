"""Orbax checkpoints of the whole train state, each with an integrity record that cannot be switched
off; last K kept plus the best.

Layout: `<directory>/<step>/{state, meta, checksums.json}`, local or gs://. `state` holds the
TrainState pytree, `meta` (JSON) the data position, the config and the metrics. Orbax writes and
commits a step by itself (locally a temporary folder renamed; on gs:// a commit_success.txt); this
module uses only its public API: when `wait_until_finished` returns, the step is committed. A
background thread per save waits for that, then process 0 writes `checksums.json`, mapping every
file under `state/` and `meta/` to [size in bytes, SHA-256]. A failure of the save or of its record
fails the save: the next `save`, `wait` or `close` raises StorageError naming the path and cause.

A checkpoint is
- good: every file matches its record;
- damaged (DamagedCheckpointError): a recorded file is missing, of another size or altered;
- unverified (UnverifiedCheckpointError): its record is missing or unreadable (a save cut short by a
  kill or a full disk, or code older than the record), so nothing vouches for its files.
Only good checkpoints are restored, unless the caller explicitly allows unverified ones. Damaged and
unverified checkpoints met when resuming are set aside into `<directory>_set_aside/`, never deleted.
Restoring also checks every saved array's shape against the target and places the arrays with the
target's shardings, so a checkpoint written on N devices restores on M.
"""

import atexit
import gc
import hashlib
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from resnet_jax import storage
from resnet_jax.errors import (DamagedCheckpointError, IncompatibleCheckpointError,
                               NoGoodCheckpointError, StorageError, UnverifiedCheckpointError)


class _OrbaxErrorLogs(logging.Filter):
    """Drops Orbax's ERROR logs unless absl's verbosity is INFO or finer (--verbosity=0).

    A failed save is raised once by this module, as StorageError naming the path and the cause;
    Orbax logs the same failure from four threads with full tracebacks (300+ lines per save).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        return not (from_orbax and record.levelno >= logging.ERROR
                    and absl_logging.get_verbosity() < absl_logging.INFO)


def _is_aftermath(error: BaseException) -> bool:
    """Errors of the writes a failed Orbax save leaves behind: its asyncio loop is closed when the
    first write fails, and the other writes' callbacks fail when they finish or at exit."""
    text = str(error)
    return (isinstance(error, RuntimeError) and text == "Event loop is closed") or (
        isinstance(error, ImportError) and "Python is likely shutting down" in text)


def _quiet_failed_save_aftermath() -> None:
    """Drop the hundreds of tracebacks that a failed save's orphaned writes print through
    sys.excepthook, sys.unraisablehook and asyncio's logger (the failure itself is raised once, as
    StorageError); everything else passes. Installed once, before any save can fail."""
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def on_exception(kind, error, tb):
        if not _is_aftermath(error):
            excepthook(kind, error, tb)

    def on_unraisable(unraisable):
        if not _is_aftermath(unraisable.exc_value):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
    logging.getLogger("asyncio").addFilter(
        lambda record: "exception was never retrieved" not in str(record.msg))
    logging.getLogger("absl").addFilter(_OrbaxErrorLogs())


def _settle_orphaned_writes() -> None:
    """At exit after a failed save: give TensorStore's orphaned writes a moment to end and
    finalise their coroutines while the interpreter is whole. Left to its teardown they fail to
    import ("sys.meta_path is None") and have crashed it (exit -11)."""
    time.sleep(1.0)
    gc.collect()


_AFTERMATH_QUIET = threading.Event()
BEST_METRIC = "eval_top1"
CHECKSUMS = "checksums.json"
CHECKSUMMED_ITEMS = ("state", "meta")
VERIFIED = "sha256"
_CHUNK = 1 << 22


def _digest(path) -> list:
    """[size in bytes, SHA-256 hex digest] of the file at `path` (an epath.Path)."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return [size, sha.hexdigest()]


def file_checksums(step_dir: storage.PathLike) -> dict[str, list]:
    """{path relative to `step_dir`: [size, sha256]} for every file under its state/ and meta/."""
    step_dir = storage.path(step_dir)
    out = {}
    for item in CHECKSUMMED_ITEMS:
        for file in storage.files_under(step_dir / item):
            out[str(file.relative_to(step_dir))] = _digest(file)
    return dict(sorted(out.items()))


def array_shapes(tree: Any) -> dict[str, tuple]:
    """{"params/stage1_block1/conv1/kernel": shape, ...} of a tree of arrays or array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(leaf.shape)
            for path, leaf in leaves}


def first_mismatch(saved: dict[str, tuple], expected: dict[str, tuple]) -> Optional[str]:
    """Describe the first array (in `expected` order) whose shape differs between the two
    {path: shape} maps, or that only one of them has; None when they agree. Also counts the rest."""

    def shape(shapes, path):
        return f"shape {shapes[path]}" if path in shapes else "absent"

    paths = list(expected) + [path for path in saved if path not in expected]
    problems = [f"{path}: {shape(saved, path)} in the checkpoint, {shape(expected, path)} in the "
                "target" for path in paths if saved.get(path) != expected.get(path)]
    if not problems:
        return None
    more = f" (and {len(problems) - 1} more arrays differ)" if len(problems) > 1 else ""
    return problems[0] + more


LISTING_ATTEMPTS = 6


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


SET_ASIDE_NOTE = "README.txt"
SET_ASIDE_TEXT = ("Checkpoints that a resuming run found damaged or unverified, moved here as "
                  "<step>.<unix time> instead of being deleted. Inspect or evaluate one with\n"
                  "  python eval.py --checkpoint <this folder>/<step>.<time> "
                  "--allow_unverified_checkpoint\nor delete it.\n")


class Restored(NamedTuple):
    state: Any
    meta: dict
    checked: str  # VERIFIED, or "unverified: <reason>" when allowed


class Checkpointer:
    """A CheckpointManager keeping the latest `keep` checkpoints and the best by eval top-1, with an
    integrity record per step."""

    def __init__(self, directory: storage.PathLike, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = storage.path(directory)
        self.async_save = async_save
        self._recorder: Optional[threading.Thread] = None
        self._error: Optional[StorageError] = None
        self._failed = False  # a StorageError was raised; close() does not raise it again
        if not _AFTERMATH_QUIET.is_set():
            _AFTERMATH_QUIET.set()
            _quiet_failed_save_aftermath()
        policy = AnyPreservationPolicy([
            LatestN(keep),
            BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
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
        record = self.step_dir(step) / CHECKSUMS
        try:
            storage.write_atomic(record, json.dumps(file_checksums(self.step_dir(step)), indent=0))
        except StorageError as e:
            self._error = e
        except Exception as e:  # noqa: BLE001 (reading the files back failed)
            self._error = StorageError(record, storage.cause(e))

    def _finish_pending(self) -> None:
        """Wait for the save in flight and its record; raise StorageError if either failed."""
        if self._recorder is not None:
            self._recorder.join()
            self._recorder = None
        if self._error is not None:
            error, self._error = self._error, None
            self._failed = True
            atexit.register(_settle_orphaned_writes)
            raise error

    def save(self, step: int, state: Any, meta: dict, metrics: Optional[dict] = None) -> None:
        """Start saving (asynchronously unless async_save=False); `metrics` with eval_top1 make it
        a candidate for best. Raises StorageError if this or the previous save failed."""
        if metrics is not None and BEST_METRIC not in metrics:
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
        """VERIFIED when every file of checkpoint `step` matches its integrity record.

        Raises DamagedCheckpointError naming the first file that is missing, of the wrong size or
        altered, and UnverifiedCheckpointError when the record is missing or unreadable, unless
        `allow_unverified` (then returns "unverified: <reason>").
        """
        folder = self.step_dir(step)
        listing = folder / CHECKSUMS
        if not folder.is_dir():
            raise DamagedCheckpointError(step, folder, "the step folder is missing")
        try:
            expected = json.loads(listing.read_text())
            if not isinstance(expected, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            problem = UnverifiedCheckpointError(
                step, listing, "no integrity record: the save was cut short (killed, disk full, "
                "storage unreachable) or written by older code")
        except Exception as e:  # noqa: BLE001 (OS, gcsfs and JSON errors)
            problem = UnverifiedCheckpointError(step, listing,
                                                f"unreadable integrity record ({storage.cause(e)})")
        else:
            self._compare(step, folder, expected)
            return VERIFIED
        if not allow_unverified:
            raise problem
        return f"unverified: {problem.reason}"

    @staticmethod
    def _compare(step: int, folder, expected: dict) -> None:
        for rel, (size, sha) in expected.items():
            path = folder / rel
            if not path.exists():
                raise DamagedCheckpointError(step, path, "the file is missing")
            found_size, found_sha = _digest(path)
            if found_size != size:
                raise DamagedCheckpointError(step, path, f"{found_size} bytes, {size} expected "
                                             "(truncated or overwritten)")
            if found_sha != sha:
                raise DamagedCheckpointError(step, path, "its contents differ from the checksum "
                                             "written at save time")

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
        problem = first_mismatch(saved, array_shapes(abstract_state))
        if problem:
            raise IncompatibleCheckpointError(f"checkpoint step {step} does not fit the state "
                                              f"built from the config: {problem}")

    def restore(self, step: int, target: Union[Any, Callable[[dict], Any]],
                allow_unverified: bool = False) -> Restored:
        """Checkpoint `step`, verified against its record, placed as the abstract state `target`
        (or `target(meta)`, for a target built from the stored config).

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


def resume_step(checkpointer: Checkpointer, allow_unverified: bool = False,
                start_fresh: bool = False) -> Optional[int]:
    """The step to resume from, or None to start from step 0.

    Process 0 checks the checkpoints newest first. Damaged ones, and unverified ones unless
    `allow_unverified`, are set aside (one printed line each, naming the file and the
    reason) until one is good. When checkpoints exist but none is good, it raises
    NoGoodCheckpointError and moves nothing, unless `start_fresh`. Other processes follow its
    decision.
    """
    decision, error = None, None
    if jax.process_index() == 0:
        decision, problems = checkpointer.resume_candidates(allow_unverified)
        if decision is None and problems and not start_fresh:
            error = NoGoodCheckpointError(
                f"no checkpoint in {checkpointer.directory} can be resumed from: "
                + "; ".join(str(p) for p in problems)
                + ". Restore an unverified one anyway with --allow_unverified_checkpoint, or set "
                "them aside and train from step 0 with --start_fresh_if_no_good_checkpoint")
        else:
            for problem in problems:
                moved = checkpointer.set_aside(problem.step)
                print(f"{problem}; set aside to {moved}", flush=True)
    if jax.process_count() > 1:
        code = -2 if error else (-1 if decision is None else decision)
        code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
        checkpointer.reload()
        if code == -2 and error is None:
            error = NoGoodCheckpointError(f"no checkpoint in {checkpointer.directory} can be "
                                          "resumed from (process 0 says why)")
        decision = code if code >= 0 else None
    if error is not None:
        raise error
    return decision
