"""Faults that end well: divergence names the quantity and the last good checkpoint; damaged or
unverified checkpoints are set aside at resume (never deleted) or stop the run, and a run killed
before its first checkpoint's record restarts by itself; a failed save (or record) fails loudly in
one line and leaves earlier checkpoints intact; retention never deletes the newest verified
checkpoint before a newer one is verified."""

import logging
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from resnet_jax import data as data_lib
from resnet_jax import storage
from resnet_jax.checkpoint import CHECKSUMS, Checkpointer, integrity, resume_step
from resnet_jax.config import validate_config
from resnet_jax.divergence import nonfinite_quantities
from resnet_jax.errors import (ConfigError, NoGoodCheckpointError, NonFiniteLossError, StorageError,
                               UnverifiedCheckpointError)
from resnet_jax.training import train_and_evaluate
from session import once_per_session
from train_cli import (SHORT_SCHEDULE, assert_trees_equal, checkpoint_steps, final_state,
                       run_train, tiny_config)


def short_config(steps=8):
    """The TINY run cut to `steps` (> 2), checkpointed every 2 steps, evaluated once at the end,
    on SHORT_SCHEDULE."""
    return tiny_config({"schedule.length": steps, **SHORT_SCHEDULE,
                        "eval_every_steps": steps, "log_every_steps": 2,
                        "checkpoint_every_steps": 2, "async_checkpointing": False})


def train(workdir, config=None, **flags):
    return train_and_evaluate(config or short_config(), str(workdir), devices=jax.devices()[:1],
                              **flags)


@pytest.fixture(scope="session")
def finished():
    """An 8-step run with checkpoints at 2, 4, 6, 8 (the last 3 kept: 4, 6, 8), trained once for
    the session by the first worker that asks; tests damage copies of it (copy_of)."""
    workdir = once_per_session("faults_run", train)
    return workdir, final_state(workdir)[0]


@pytest.fixture
def copy_of(finished, tmp_path):
    target = tmp_path / "w"
    shutil.copytree(finished[0], target)
    return target


def overwrite_largest_state_file(workdir, step):
    folder = workdir / "checkpoints" / str(step) / "state" / "ocdbt.process_0" / "d"
    victim = max(folder.iterdir(), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.seek(victim.stat().st_size // 2)
        f.write(b"\xde\xad\xbe\xef\xde\xad\xbe\xef")
    return victim


def test_damaged_latest_is_set_aside_and_the_run_resumes_to_the_same_bits(finished, copy_of,
                                                                          capsys):
    victim = overwrite_largest_state_file(copy_of, 8)
    train(copy_of)
    out = capsys.readouterr().out
    assert f"checkpoint step 8 is damaged: {victim}: its contents differ" in out
    assert "(resuming from step 6)" in out
    entries = {p.name: p for p in (copy_of / "checkpoints_set_aside").iterdir()}
    assert "damaged or unverified" in entries.pop("README.txt").read_text()
    (moved,) = entries.values()
    assert moved.name.startswith("8.") and (moved / CHECKSUMS).exists()
    assert_trees_equal(final_state(copy_of)[0], finished[1])


def test_no_good_checkpoint_stops_unless_a_flag_says_what_to_do(finished, copy_of, capsys):
    for step in (4, 6, 8):  # records that are there but unreadable: not an interrupted save
        (copy_of / "checkpoints" / str(step) / CHECKSUMS).write_text("{not json")
    with pytest.raises(NoGoodCheckpointError) as err:
        train(copy_of)
    message = str(err.value)
    assert "step 8 is unverified" in message and "step 4 is unverified" in message
    assert "unreadable integrity record" in message
    assert "--allow_unverified_checkpoint" in message
    assert "--start_fresh_if_no_good_checkpoint" in message
    assert checkpoint_steps(copy_of) == [4, 6, 8]  # nothing moved

    train(copy_of, allow_unverified_checkpoint=True)
    assert "(resuming from step 8)" in capsys.readouterr().out
    assert checkpoint_steps(copy_of) == [4, 6, 8]

    config = short_config()
    config.schedule.length = 4  # a fresh run to step 4 writes a new, verified step 4
    train(copy_of, config, start_fresh_if_no_good_checkpoint=True)
    assert "Resumed" not in capsys.readouterr().out
    assert len(list((copy_of / "checkpoints_set_aside").glob("*.*[0-9]"))) == 3
    assert Checkpointer(copy_of / "checkpoints", read_only=True).verify(4) == "sha256"


def test_a_run_killed_before_its_first_record_restarts_by_itself_to_the_same_bits(tmp_path,
                                                                                  capsys):
    """The state a kill leaves between Orbax's commit of the first checkpoint and its record:
    step 4 committed without checksums.json, nothing saved after it. The same command then sets
    step 4 aside, trains from step 0 and ends where a run never interrupted ends."""
    config = short_config()
    config.checkpoint_every_steps = 4
    train(tmp_path, config)
    uninterrupted = final_state(tmp_path)[0]
    shutil.rmtree(tmp_path / "checkpoints" / "8")
    os.remove(tmp_path / "checkpoints" / "4" / CHECKSUMS)
    capsys.readouterr()

    train(tmp_path, config)
    out = capsys.readouterr().out
    (moved,) = (tmp_path / "checkpoints_set_aside").glob("4.*")
    assert (f"no checkpoint in {tmp_path / 'checkpoints'} was completed: the saves of steps [4] "
            f"were cut short before their integrity records; set aside to {moved}; training from "
            "step 0") in out
    assert "Resumed" not in out and "resuming from" not in out
    assert checkpoint_steps(tmp_path) == [4, 8]
    assert_trees_equal(final_state(tmp_path)[0], uninterrupted)


def test_unverified_steps_beside_a_damaged_one_still_stop_the_run(finished, copy_of):
    os.remove(copy_of / "checkpoints" / "8" / CHECKSUMS)
    os.remove(copy_of / "checkpoints" / "6" / CHECKSUMS)
    overwrite_largest_state_file(copy_of, 4)
    with pytest.raises(NoGoodCheckpointError, match="step 4 is damaged"):
        train(copy_of)
    assert checkpoint_steps(copy_of) == [4, 6, 8]


def test_retention_keeps_the_newest_verified_step_until_a_newer_one_is_verified(tmp_path,
                                                                                 monkeypatch):
    """Orbax prunes right after it commits a step, before that step's record is written: a record
    that never comes (a kill, here a failure) must leave the previous, verified step in place."""
    checkpointer = Checkpointer(tmp_path / "checkpoints", keep=2, async_save=False)
    state = {"w": np.ones((3,), np.float32)}
    for step in (1, 2):
        checkpointer.save(step, state, {"step": step})

    def killed(step_dir):
        raise StorageError(step_dir, "killed before the record")

    monkeypatch.setattr(integrity, "write_record", killed)
    with pytest.raises(StorageError, match="killed before the record"):
        checkpointer.save(3, state, {"step": 3})
    checkpointer.close()
    monkeypatch.undo()
    restarted = Checkpointer(tmp_path / "checkpoints", keep=2)
    assert restarted.all_steps() == [2, 3] and restarted.newest_good_step() == 2
    assert resume_step(restarted) == 2
    assert restarted.all_steps() == [2]
    restarted.close()


def test_constructing_a_checkpointer_changes_no_process_wide_hook(tmp_path):
    def hooks():
        return (sys.excepthook, sys.unraisablehook,
                list(logging.getLogger("asyncio").filters), list(logging.getLogger("absl").filters))

    before = hooks()
    Checkpointer(tmp_path / "checkpoints").close()
    assert hooks() == before


def test_fewer_than_two_kept_checkpoints_are_refused(tmp_path):
    config = short_config()
    config.keep_checkpoints = 1
    with pytest.raises(ConfigError, match=r"config.keep_checkpoints=1 is not allowed; expected an "
                                          r"int of at least 2"):
        validate_config(config, device_count=1)
    with pytest.raises(ValueError, match="keep=1"):
        Checkpointer(tmp_path / "checkpoints", keep=1)


def poisoned(from_index):
    def build(data_config, hosts, seed):
        pipeline = data_lib.BUILDERS["digits"](data_config, hosts, seed)
        clean = pipeline.train_batches

        def train_batches(start_step=0):
            for index, batch in enumerate(clean(start_step), start=start_step):
                if index >= from_index:
                    batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
                yield batch

        pipeline.train_batches = train_batches
        return pipeline
    return build


@pytest.mark.parametrize("from_index, step, last_good", [
    (6, 7, "the last good checkpoint is step 6"),
    (0, 1, "there is no good checkpoint"),
])
def test_divergence_names_quantities_and_the_last_good_checkpoint(tmp_path, monkeypatch,
                                                                  from_index, step, last_good):
    monkeypatch.setitem(data_lib.BUILDERS, "poisoned", poisoned(from_index))
    config = short_config()
    config.data.dataset, config.async_checkpointing, config.log_every_steps = "poisoned", True, 1
    with pytest.raises(NonFiniteLossError) as err:
        train(tmp_path, config)
    message = str(err.value)
    # NaN images give NaN gradients and BN statistics; the loss itself may stay finite.
    assert f"diverged at step {step}: non-finite " in message
    assert "gradients, parameters, BN statistics (loss " in message
    assert last_good in message
    if from_index:  # the last good checkpoint is kept, and restores to finite weights
        assert checkpoint_steps(tmp_path)[-1] == from_index
        (params, stats), restored = final_state(tmp_path)
        assert restored == from_index
        assert all(np.isfinite(x).all() for x in jax.tree.leaves((params, stats)))


def test_nonfinite_quantities_names_only_the_flagged_ones():
    flags = {"loss": True, "gradients": True, "parameters": True, "bn_statistics": False}
    assert nonfinite_quantities(flags) == ["BN statistics"]


def test_a_failed_integrity_record_fails_the_save(tmp_path, monkeypatch):
    def full_disk(path, data):
        raise StorageError(path, "[Errno 28] No space left on device")

    checkpointer = Checkpointer(tmp_path / "checkpoints", async_save=False)
    state = {"w": np.ones((3,), np.float32)}
    checkpointer.save(1, state, {"step": 1})
    monkeypatch.setattr(storage, "write_atomic", full_disk)
    with pytest.raises(StorageError, match=r"checksums.json: \[Errno 28\] No space left"):
        checkpointer.save(2, state, {"step": 2})
    checkpointer.close()
    reader = Checkpointer(tmp_path / "checkpoints", read_only=True)
    assert reader.verify(1) == "sha256"
    with pytest.raises(UnverifiedCheckpointError, match="step 2 is unverified"):
        reader.verify(2)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root; skipped otherwise): room for one checkpoint of the tiny run."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_stops_in_one_line_and_the_next_start_cleans_up(small_disk):
    workdir = small_disk / "run"
    short = {"async_checkpointing": True, "checkpoint_every_steps": 2, "schedule.length": 8,
             **SHORT_SCHEDULE, "eval_every_steps": 8}  # the save of step 4 fails
    result = run_train(workdir, short, check=False, timeout=300)
    assert result.returncode not in (0, -11), result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert "No space left on device" in lines[-1] and "cannot write" in lines[-1]
    assert len(lines) < 40, result.stderr[-3000:]  # no asyncio aftermath
    assert "Segmentation" not in result.stderr
    steps = checkpoint_steps(workdir)
    assert steps and Checkpointer(workdir / "checkpoints", read_only=True).verify(steps[-1])
    assert any(".orbax-checkpoint-tmp" in p.name for p in (workdir / "checkpoints").iterdir())

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    resumed = run_train(workdir, short)
    assert f"(resuming from step {steps[-1]})" in resumed.stdout
    assert not any("tmp" in p.name for p in (workdir / "checkpoints").iterdir())
