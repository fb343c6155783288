"""Training: multi-device and multi-process equality, resume, preemption, bad configs, accuracy.
Divergence (NaN) is test_checkpoint_faults.py's."""

import json
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from resnet_jax.checkpoint import Checkpointer
from resnet_jax.config import base_config, validate_config
from resnet_jax.errors import ConfigError
from resnet_jax.metric_writers import read_metrics
from resnet_jax.training import train_and_evaluate
from train_cli import (FEW_STEPS, REPO, SHORT_SCHEDULE, assert_trees_equal, checkpoint_steps,
                       env_with_devices, final_state, run_train, start_train, tiny_config,
                       train_command)


def test_reference_run_writes_metrics_checkpoints_and_tensorboard(reference_run):
    workdir, (_, step) = reference_run
    assert step == 40
    train = read_metrics(str(workdir), "train")
    evals = read_metrics(str(workdir), "eval")
    assert [r["step"] for r in train] == list(range(5, 41, 5))
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    assert all(r["count"] == 360 for r in evals)
    for key in ("loss", "top1", "top5", "lr", "grad_norm", "images_per_sec",
                "images_per_sec_per_device", "step_time"):
        assert np.isfinite(train[-1][key]), key
    assert train[0]["lr"] == pytest.approx(0.1) and train[-1]["lr"] == pytest.approx(0.01)
    assert list((workdir / "tensorboard" / "train").glob("events.out.tfevents.*"))
    assert json.loads((workdir / "config.json").read_text())["schedule"]["length"] == 40
    # The last K=3 checkpoints plus the best by eval top-1 are kept.
    steps = checkpoint_steps(workdir)
    assert steps[-3:] == [20, 30, 40] and len(steps) <= 4


def test_eight_devices_match_one_device(few_steps_run, tmp_path):
    params, stats = few_steps_run
    run_train(tmp_path, FEW_STEPS, devices=8)
    (params8, stats8), step = final_state(tmp_path)  # written on 8 devices, restored on 1
    assert step == 4
    assert_trees_equal(params8, params, rtol=1e-4, atol=1e-5)
    assert_trees_equal(stats8, stats, rtol=1e-4, atol=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two_processes(workdir, overrides) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{_free_port()}"
    return [subprocess.Popen(
        train_command(workdir, overrides, f"--coordinator_address={address}", "--num_processes=2",
                      f"--process_id={i}"),
        env=env_with_devices(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO) for i in range(2)]


def _finish(procs) -> list[tuple[str, str]]:
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return outputs


def test_two_processes_match_one_and_stop_together_on_sigterm(few_steps_run, tmp_path):
    """FEW_STEPS' first four steps as two processes started with explicit flags, on a schedule long
    enough to be stopped: step 4 (its checkpoint kept) matches one process; then JAX's preemption
    notifier receives SIGTERM, and both processes save the same step and exit 0."""
    params, stats = few_steps_run
    procs = _start_two_processes(tmp_path, {**FEW_STEPS, "schedule.length": 400,
                                            "checkpoint_every_steps": 4, "keep_checkpoints": 100})
    _wait_for_checkpoint(procs[0], tmp_path, 8)
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outputs = _finish(procs)
    stopped = checkpoint_steps(tmp_path)[-1]
    assert 8 <= stopped < 400
    assert f"Stop requested: saved step {stopped}" in outputs[0][0]
    assert "eval at step 4" in outputs[0][0] and "eval at step" not in outputs[1][0]
    assert "2 process(es) x 1 cpu device(s) = 2" in outputs[0][0]
    # Process 1 prints nothing of its own (gloo's C++ start-up line is not ours to silence).
    assert all(line.startswith("[Gloo]") for line in outputs[1][0].splitlines()), outputs[1][0]
    (params2, stats2), step = final_state(tmp_path, step=4)
    assert step == 4
    assert_trees_equal(params2, params, rtol=1e-4, atol=1e-5)
    assert_trees_equal(stats2, stats, rtol=1e-4, atol=1e-5)


def test_a_slurm_job_starts_as_one_run_without_flags():
    """Two tasks of an emulated one-node SLURM job step, started without flags as train.py is
    (initialize_distributed() with no arguments: JAX reads the job), join one 2-process run.
    What train.py does once started is what it does with explicit flags
    (test_two_processes_match_one_and_stop_together_on_sigterm)."""
    script = ("from resnet_jax import parallel; parallel.initialize_distributed(); import jax; "
              "print(jax.process_index(), jax.process_count(), jax.device_count())")
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "localhost",
             "SLURM_NODELIST": "localhost", "SLURM_STEP_NUM_NODES": "1", "SLURM_JOB_NUM_NODES": "1",
             "JAX_COORDINATOR_PORT": str(_free_port())}
    procs = [subprocess.Popen(
        [sys.executable, "-c", script],
        env={**env_with_devices(1), **slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO) for i in range(2)]
    outputs = _finish(procs)
    assert [out.split()[-3:] for out, _ in outputs] == [["0", "2", "2"], ["1", "2", "2"]]


def test_a_single_process_without_a_cluster_starts_at_once():
    """No cluster in the environment: no coordinator, no metadata server, one process."""
    script = ("from resnet_jax import parallel; parallel.initialize_distributed(); import jax; "
              "print(jax.process_count(), jax.device_count())")
    env = {k: v for k, v in env_with_devices(2).items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR", "TPU_", "KUBERNETES_"))}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "2"]


def test_checkpoint_every_steps_means_what_it_says(tmp_path):
    """Evaluation no longer forces a save; config.checkpoint_at_eval adds one at every eval."""
    config = tiny_config({"schedule.length": 12, **SHORT_SCHEDULE})
    config.eval_every_steps, config.checkpoint_every_steps, config.keep_checkpoints = 3, 5, 10
    config.async_checkpointing = False
    train_and_evaluate(config, str(tmp_path / "plain"), devices=jax.devices()[:1])
    assert checkpoint_steps(tmp_path / "plain") == [5, 10, 12]
    config.checkpoint_at_eval = True
    train_and_evaluate(config, str(tmp_path / "at_eval"), devices=jax.devices()[:1])
    assert checkpoint_steps(tmp_path / "at_eval") == [3, 5, 6, 9, 10, 12]


def _wait_for_checkpoint(proc, workdir, min_step, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = checkpoint_steps(workdir)
        if steps and steps[-1] >= min_step:
            return steps[-1]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared")


def test_sigterm_then_sigkill_then_resume_is_bitwise_equal(reference_run, tmp_path, capsys):
    """SIGTERM: train.py saves the step it reached and exits 0. The same command resumes from that
    step; SIGKILLed after its next checkpoint, the next start resumes from the newest step with
    its integrity record (a kill between Orbax's commit and the record leaves the newest step
    unverified: it is set aside). The end: bit for bit the uninterrupted reference run."""
    _, (reference, _) = reference_run
    overrides = {"checkpoint_every_steps": 5}
    proc = start_train(tmp_path, overrides)
    _wait_for_checkpoint(proc, tmp_path, 5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    stopped = checkpoint_steps(tmp_path)[-1]
    assert f"Stop requested: saved step {stopped}" in out
    assert 5 <= stopped < 35, "stopped too late to be killed before the end"

    proc = start_train(tmp_path, overrides)
    _wait_for_checkpoint(proc, tmp_path, stopped + 1)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    assert f"(resuming from step {stopped})" in out
    killed_at = [s for s in checkpoint_steps(tmp_path)
                 if (tmp_path / "checkpoints" / str(s) / "checksums.json").exists()][-1]
    assert killed_at < 40, "the run finished before it was killed"

    capsys.readouterr()
    train_and_evaluate(tiny_config(overrides), str(tmp_path), devices=jax.devices()[:1])
    assert f"(resuming from step {killed_at})" in capsys.readouterr().out
    assert_trees_equal(final_state(tmp_path)[0], reference)


@pytest.mark.parametrize("field, value, message", [
    ("global_batch_size", 100, r"global_batch_size=100 is not divisible by the 8 devices"),
    ("schedule.name", "step", r"schedule.name='step' is not allowed; expected one of"),
    ("optimizer.momentum", 1.5, r"optimizer.momentum=1.5 is not allowed"),
    ("model.name", "resnet51", r"unknown model 'resnet51'; known models: .*resnet50"),
    ("model.shortcut", "D", r"shortcut='D' is not allowed; expected one of"),
    ("model.bn_group_size", 3, r"bn_group_size=3 must divide the per-device batch 16"),
    ("accumulation_steps", 0, r"accumulation_steps=0 is not allowed; expected a positive int"),
    ("accumulation_steps", 3, r"accumulation_steps=3 must divide the per-device batch 16 "
                              r"\(global_batch_size / 8 devices\)"),
    ("data.dataset", "mnist", r"data.dataset='mnist' is not allowed; expected one of"),
    ("schedule.boundaries", (10.0, 50.0), r"boundaries=\(10.0, 50.0\) must lie inside"),
])
def test_bad_config_is_rejected_naming_the_field(field, value, message):
    config = base_config()
    *parents, leaf = field.split(".")
    target = config
    for p in parents:
        target = target[p]
    target[leaf] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config, device_count=8)


def test_bn_groups_must_divide_the_per_device_micro_batch():
    config = base_config()
    config.accumulation_steps, config.model.bn_group_size = 4, 8
    message = (r"^config.model.bn_group_size=8 must divide the per-device micro-batch 4 "
               r"\(global_batch_size / 8 devices / 4 accumulation_steps\)$")
    with pytest.raises(ConfigError, match=message):
        validate_config(config, device_count=8)
    config.model.bn_group_size = 4
    validate_config(config, device_count=8)


def test_evaluation_needs_only_the_eval_batch_to_divide_the_devices():
    config = base_config()
    config.global_batch_size, config.eval_batch_size, config.model.bn_group_size = 128, 60, 32
    validate_config(config, device_count=3, training=False)
    with pytest.raises(ConfigError, match="global_batch_size=128 is not divisible by the 3 devices"):
        validate_config(config, device_count=3)
    config.eval_batch_size = 64
    with pytest.raises(ConfigError, match="eval_batch_size=64 is not divisible by the 3 devices"):
        validate_config(config, device_count=3, training=False)


def test_unknown_and_mistyped_fields_are_rejected():
    config = base_config()
    config.unlock()
    config.schedule.lenght = 3
    with pytest.raises(ConfigError, match="unknown config field 'schedule.lenght'"):
        validate_config(config)
    config = base_config()
    config.unlock()
    del config["seed"]
    config.seed = "zero"
    with pytest.raises(ConfigError, match="'seed'='zero' has type str; expected int"):
        validate_config(config)


def test_embedded_digits_run_reaches_97_percent_and_accounts_for_its_time(tmp_path, capsys):
    """README's main job, in full: configs/default.py on one device. Its time split: the session's
    phases and "other" add up to the wall time measured here within 5 %, no phase is counted twice
    (other >= 0), and every log window's split adds up to that window."""
    from configs.default import get_config

    started = time.perf_counter()
    result = train_and_evaluate(get_config(), str(tmp_path), devices=jax.devices()[:1])
    wall = time.perf_counter() - started
    assert result["eval"]["count"] == 360
    assert result["eval"]["top1"] >= 0.97, result
    assert Checkpointer(str(tmp_path / "checkpoints"), read_only=True).latest_step() == result["step"]

    split = result["time"]
    phases = ("compile", "input_wait", "steps", "eval", "checkpoint", "profile", "other")
    assert all(split[p] >= 0 for p in phases), split
    assert all(split[p] > 0 for p in ("compile", "steps", "eval", "checkpoint")), split
    assert abs(sum(split[p] for p in phases) - wall) <= 0.05 * wall, (split, wall)
    windows = read_metrics(str(tmp_path), "train")
    assert len(windows) > 1
    for r in windows:
        assert all(r[f"time_{p}"] >= 0 for p in phases), r
        assert sum(r[f"time_{p}"] for p in phases) == pytest.approx(r["time_wall"])
    assert sum(r["time_wall"] for r in windows) <= split["wall"]
    summary = capsys.readouterr().out.splitlines()
    assert any(line.startswith("time: compile ") and "input wait" in line for line in summary)
