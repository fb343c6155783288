"""Orbax checkpoints: asynchronous, atomic, checksummed saves of the whole train state; last K kept
plus the best.

Layout: `<directory>/<step>/{state, meta, checksums.json}`. `state` holds the TrainState pytree
(step, params, BN statistics, optimizer state, RNG key); `meta` (JSON) holds the data position, the
config and the metrics; `checksums.json` maps every file under `state/` and `meta/` to [size in
bytes, SHA-256]. A save is written to a temporary folder and renamed when complete; the checksums
are written into that folder just before the rename, so they are part of the same atomic commit. A
run killed mid-save leaves the previous checkpoint as the latest; stale temporary folders are
removed at start-up. Restoring verifies the checksums, checks every saved array's shape against the
target, and places the arrays with the target's shardings, so a checkpoint written on N devices
restores on M.
"""

import glob
import hashlib
import json
import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from resnet_jax.errors import DamagedCheckpointError, IncompatibleCheckpointError

BEST_METRIC = "eval_top1"
CHECKSUMS = "checksums.json"
CHECKSUMMED_ITEMS = ("state", "meta")
# Suffix of the folder Orbax writes a step into before renaming it to `<step>`.
TMP_SUFFIX = ".orbax-checkpoint-tmp"
_CHUNK = 1 << 22


def _digest(path: str) -> list:
    """[size in bytes, SHA-256 hex digest] of the file at `path`."""
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return [size, sha.hexdigest()]


def file_checksums(step_dir: str) -> dict[str, list]:
    """{path relative to `step_dir`: [size, sha256]} for every file under its state/ and meta/."""
    out = {}
    for item in CHECKSUMMED_ITEMS:
        for root, _, files in os.walk(os.path.join(step_dir, item)):
            for name in files:
                path = os.path.join(root, name)
                out[os.path.relpath(path, step_dir)] = _digest(path)
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


def _root_cause(error: BaseException) -> str:
    """First line of the innermost cause (TensorStore names the array and file there)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return str(error).split("\n")[0][:400]


class Checkpointer:
    """A CheckpointManager keeping the latest `keep` checkpoints and the best by eval top-1."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(directory)  # Orbax needs absolute paths
        self.async_save = async_save
        self._saving: Optional[int] = None
        policy = AnyPreservationPolicy([
            LatestN(keep),
            BestN(get_metric_fn=lambda m: m[BEST_METRIC], n=1,
                  keep_checkpoints_without_metrics=False),
        ])
        # Saves are always asynchronous underneath (the checksums are written by the finalization
        # callback); a synchronous save waits for its own completion.
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_checksums),
            cleanup_tmp_directories=not read_only, create=not read_only, read_only=read_only)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()})

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _write_checksums(self) -> None:
        """Finalization callback: checksum the step being committed, inside its temporary folder.

        Failures are logged, never raised: a checkpoint without checksums is still a checkpoint.
        """
        if jax.process_index() != 0 or self._saving is None:
            return
        try:
            folders = glob.glob(glob.escape(self.step_dir(self._saving)) + TMP_SUFFIX + "*")
            if len(folders) != 1:
                logging.warning("no single temporary folder for step %d (found %s); its "
                                "checksums are not written", self._saving, folders)
                return
            tmp = os.path.join(folders[0], CHECKSUMS + ".tmp")
            with open(tmp, "w") as f:
                json.dump(file_checksums(folders[0]), f, indent=0)
            os.replace(tmp, os.path.join(folders[0], CHECKSUMS))
        except Exception:  # noqa: BLE001 (the save itself must not fail over its checksums)
            logging.exception("writing the checksums of step %d failed", self._saving)

    def save(self, step: int, state: Any, meta: dict, metrics: Optional[dict] = None) -> None:
        """Start saving (asynchronously unless async_save=False); `metrics` with eval_top1 make it
        a candidate for best."""
        if metrics is not None and BEST_METRIC not in metrics:
            metrics = None
        self.manager.wait_until_finished()  # Orbax waits here anyway; then _saving is ours alone.
        self._saving = step
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)),
                          metrics=metrics, force=True)
        if not self.async_save:
            self.manager.wait_until_finished()

    def verify(self, step: int) -> bool:
        """Check checkpoint `step`'s files against its checksums.json.

        True when every listed file matches; False when the checkpoint has no checksums (written by
        older code, or on storage without atomic renames). Raises DamagedCheckpointError naming the
        first file that is missing, of the wrong size, or altered.
        """
        folder = self.step_dir(step)
        listing = os.path.join(folder, CHECKSUMS)
        if not os.path.isdir(folder):
            raise DamagedCheckpointError(step, folder, "the step folder is missing")
        if not os.path.exists(listing):
            return False
        try:
            with open(listing) as f:
                expected = json.load(f)
        except (OSError, ValueError) as e:
            raise DamagedCheckpointError(step, listing, f"unreadable ({e})") from None
        for rel, (size, sha) in expected.items():
            path = os.path.join(folder, rel)
            if not os.path.exists(path):
                raise DamagedCheckpointError(step, path, "the file is missing")
            found_size, found_sha = _digest(path)
            if found_size != size:
                raise DamagedCheckpointError(step, path, f"{found_size} bytes, {size} expected "
                                             "(truncated or overwritten)")
            if found_sha != sha:
                raise DamagedCheckpointError(step, path, "its contents differ from the checksum "
                                             "written at save time")
        return True

    def check_compatible(self, step: int, abstract_state: Any) -> None:
        """Raise IncompatibleCheckpointError naming the first saved array whose path or shape
        differs from `abstract_state` (e.g. a config naming another model)."""
        try:
            saved = array_shapes(self.manager.item_metadata(step).state)
        except Exception as e:  # noqa: BLE001 (Orbax reports unreadable metadata many ways)
            raise DamagedCheckpointError(step, os.path.join(self.step_dir(step), "state"),
                                         f"unreadable array metadata ({_root_cause(e)})") from e
        problem = first_mismatch(saved, array_shapes(abstract_state))
        if problem:
            raise IncompatibleCheckpointError(f"checkpoint step {step} does not fit the state "
                                              f"built from the config: {problem}")

    def restore(self, step: int, abstract_state: Any, verify: bool = True) -> tuple[Any, dict]:
        """(state placed as `abstract_state`'s shardings, meta dict) of checkpoint `step`.

        With `verify`, the files are first checked against their checksums. Raises
        DamagedCheckpointError for missing or unreadable files and IncompatibleCheckpointError for
        saved arrays that do not fit `abstract_state`.
        """
        if verify:
            self.verify(step)
        self.check_compatible(step, abstract_state)
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                              meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 (TensorStore and Orbax raise many types)
            raise DamagedCheckpointError(step, os.path.join(self.step_dir(step), "state"),
                                         f"it cannot be restored: {_root_cause(e)}") from e
        return restored.state, restored.meta

    def restore_meta(self, step: int) -> dict:
        """The meta dict of checkpoint `step` (raises DamagedCheckpointError if unreadable)."""
        try:
            return self.manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # noqa: BLE001
            raise DamagedCheckpointError(step, os.path.join(self.step_dir(step), "meta"),
                                         f"unreadable ({_root_cause(e)})") from e

    def reload(self) -> None:
        """Re-read the step list from disk (to see checkpoints another process has written)."""
        self.manager.reload()

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())


    def wait(self) -> None:
        """Block until every started save is complete on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()

