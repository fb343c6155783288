"""Helpers for tests that run train.py in subprocesses: a tiny config and final-state loading."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]

# The tests' network: CIFAR ResNet-8 (models/registry.py), every layer kind and shortcut of the
# main job's ResNet-20 at a third of its depth: its train step compiles in about a third less time
# and runs three times as fast, in each of the dozens of runs the suite trains. README's main job
# itself (test_training.py) and the command-line tests of the default config keep ResNet-20.
MODEL = "cifar_resnet8"

# A tiny run of MODEL on the embedded digits: 40 steps of batch 64, evaluated and checkpointed
# every 10 (a test that needs more checkpoints asks for them).
TINY = {
    "model.name": MODEL,
    "global_batch_size": 64, "eval_batch_size": 64, "schedule.unit": "steps",
    "schedule.length": 40, "schedule.boundaries": (20.0,), "schedule.base_lr": 0.4,
    "log_every_steps": 5, "eval_every_steps": 10, "checkpoint_every_steps": 10,
}


# A few steps at a moderate learning rate: early training amplifies float rounding (a 1e-7
# perturbation of the initial parameters reaches 2e-4 by step 4 at lr 0.1), so equality "to float
# tolerance" is checked where rounding stays rounding.
FEW_STEPS = {"schedule.length": 4, "schedule.boundaries": (2.0,), "schedule.base_lr": 0.04,
             "eval_every_steps": 2, "log_every_steps": 2}


# The learning-rate drop of the short runs (a few to a dozen steps), inside them as validation
# requires (TINY's drop at step 20 is not): one boundary, as TINY has, so their compiled steps are
# TINY's (the schedule's numbers are arguments of the step, their count is its shape), which the
# session's persistent compilation cache then serves.
SHORT_SCHEDULE = {"schedule.boundaries": (2.0,)}


def tiny_config(overrides=None):
    """The TINY run (with `overrides`, flattened field names as TINY's) as a ConfigDict, for
    in-process calls: the config train.py builds from configs/default.py and the same fields."""
    from resnet_jax.config import base_config

    c = base_config()
    c.update_from_flattened_dict({**TINY, **(overrides or {})})
    return c


def train_command(workdir, overrides=None, *extra) -> list[str]:
    args = [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs/default.py"),
            "--workdir", str(workdir)]
    args += [f"--config.{k}={v}" for k, v in {**TINY, **(overrides or {})}.items()]
    return args + list(extra)


def env_with_devices(devices: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def run_train(workdir, overrides=None, *extra, devices=1, timeout=300, check=True):
    """Run train.py to completion; returns the CompletedProcess (stdout and stderr captured)."""
    result = subprocess.run(train_command(workdir, overrides, *extra), env=env_with_devices(devices),
                            capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"train.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def start_train(workdir, overrides=None, *extra, devices=1) -> subprocess.Popen:
    return subprocess.Popen(train_command(workdir, overrides, *extra), env=env_with_devices(devices),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def final_state(workdir, step=None):
    """((params, batch_stats) as numpy, step) of a run's checkpoint `step` (default: the latest),
    restored on one device under the config stored with it."""
    from resnet_jax import storage
    from resnet_jax.restore import ExperimentCache, restore

    restored = restore(storage.path(workdir) / "checkpoints", step,
                       experiments=ExperimentCache(jax.devices()[:1]))
    state = restored.state
    return jax.tree.map(np.asarray, (state.params, state.batch_stats)), restored.meta["step"]


def checkpoint_steps(workdir) -> list[int]:
    """Step folders under the workdir's checkpoints/ (local or gs://), complete or not."""
    from resnet_jax import storage

    d = storage.path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def assert_trees_equal(a, b, rtol=0.0, atol=0.0):
    flat_a, flat_b = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)
    assert len(flat_a) == len(flat_b)
    for (path, x), y in zip(flat_a, flat_b):
        if rtol == 0 and atol == 0:
            np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
        else:
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))
