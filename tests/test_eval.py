"""Offline evaluation: checkpoints of a short training run evaluate to the numbers the training loop
logged, on 1 and on 8 devices, each example counted once; multi-view eval steps; clear errors; a
damaged checkpoint is never reported as good.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from resnet_jax.checkpoint import CHECKSUMS, VERIFIED, first_mismatch
from resnet_jax.config import base_config
from resnet_jax.convert import flax_to_torchvision
from resnet_jax.errors import ConfigError, EvalError, IncompatibleCheckpointError
from resnet_jax.experiment import build_experiment
from resnet_jax.metric_writers import read_metrics
from resnet_jax.models import create_model
from resnet_jax.offline_eval import Request, resolve_config, run
from resnet_jax.restore import ExperimentCache, restore
from resnet_jax.steps import TrainState, make_eval_step
from resnet_jax.training import train_and_evaluate
from session import once_per_session
from train_cli import MODEL

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_EVAL = 360  # digits test split; not a multiple of the eval batch of 64


def tiny_config():
    c = base_config()
    c.model.name = MODEL
    c.data.dataset = "digits"
    c.global_batch_size = 32
    c.eval_batch_size = 64
    c.schedule.unit = "steps"
    c.schedule.length = 6.0
    c.schedule.boundaries = (3.0,)
    c.eval_every_steps = 3
    c.checkpoint_every_steps = 3
    c.log_every_steps = 3
    c.async_checkpointing = False
    return c


@pytest.fixture(scope="session")
def run_dir():
    """A 6-step run with checkpoints (and logged evals) at steps 3 and 6, trained once for the
    session by the first worker that asks; tests only read it (copy_of gives a copy to write)."""
    return str(once_per_session("eval_run", lambda folder: train_and_evaluate(tiny_config(),
                                                                             str(folder))))


@pytest.fixture
def copy_of(run_dir, tmp_path):
    """A fresh copy of the run to damage or trim."""
    target = str(tmp_path / "w")
    shutil.copytree(run_dir, target)
    return target


def state_file(workdir, step, largest=True):
    """The largest (or smallest) data file of checkpoint `step`'s state."""
    folder = os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.process_0", "d")
    files = sorted((os.path.join(folder, f) for f in os.listdir(folder)), key=os.path.getsize)
    return files[-1] if largest else files[0]


def overwrite_middle(path, data=b"\xde\xad\xbe\xef\xde\xad\xbe\xef"):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(data)


def test_offline_eval_equals_training_log(copy_of):
    records = run(Request(workdir=copy_of, all_steps=True))
    logged = {r["step"]: r for r in read_metrics(copy_of, "eval")}
    assert [r["step"] for r in records] == [3, 6]
    for record in records:
        for key in ("loss", "top1", "top5", "count"):
            assert record["metrics"][key] == pytest.approx(logged[record["step"]][key], rel=1e-6)
        assert record["metrics"]["count"] == NUM_EVAL
        assert record["checked"] == "sha256"
        with open(os.path.join(copy_of, "eval_offline", f"{record['step']}.json")) as f:
            assert json.load(f)["metrics"] == record["metrics"]
    assert [r["step"] for r in read_metrics(copy_of, "eval_offline")] == [3, 6]
    assert os.listdir(os.path.join(copy_of, "tensorboard", "eval_offline"))


def test_cli_on_8_devices_counts_every_example_once(run_dir, tmp_path):
    """eval.py in a process with 8 devices, checkpoints saved on 1; per-class counts too."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = str(tmp_path / "out")
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "eval.py"), f"--workdir={out}",
         f"--checkpoint={run_dir}/checkpoints/6", "--per_class", "--config.eval_batch_size=48"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on 8 device(s)" in done.stdout and "class" in done.stdout
    with open(os.path.join(out, "eval_offline", "6.json")) as f:
        record = json.load(f)
    logged = [r for r in read_metrics(run_dir, "eval") if r["step"] == 6][0]
    metrics = record["metrics"]
    assert record["devices"] == 8 and record["config"]["eval_batch_size"] == 48
    assert metrics["count"] == NUM_EVAL
    assert sum(metrics["per_class_count"]) == NUM_EVAL
    assert metrics["top1"] == pytest.approx(logged["top1"], abs=1e-9)
    assert metrics["loss"] == pytest.approx(logged["loss"], rel=1e-5)
    per_class_correct = np.nansum(np.array(metrics["per_class_top1"], float)
                                  * np.array(metrics["per_class_count"]))
    assert per_class_correct == pytest.approx(metrics["top1"] * NUM_EVAL)


class ToyModel(nn.Module):
    """Logits from the spatial mean of the image: any image size works."""

    @nn.compact
    def __call__(self, x, train):
        return nn.Dense(7)(jnp.mean(x, axis=(1, 2)) * 5.0)


def reference_sums(model, variables, views, labels, mask):
    """loss/top1/top5/count in numpy: the mean over views of the softmax, its cross-entropy."""
    probs = []
    for v in views:
        logits = np.asarray(model.apply(variables, jnp.asarray(v), train=False), np.float64)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        probs.append(e / e.sum(-1, keepdims=True))
    mean = np.mean(probs, axis=0)
    rank = (mean > mean[np.arange(len(labels)), labels][:, None]).sum(-1)
    return {"loss": np.sum(-np.log(mean[np.arange(len(labels)), labels]) * mask),
            "top1": np.sum((rank < 1) * mask), "top5": np.sum((rank < 5) * mask),
            "count": mask.sum()}


@pytest.mark.parametrize("layout", ["center", "ten_crop", "multi_scale"])
def test_eval_step_averages_softmax_over_views(layout):
    rng = np.random.default_rng(0)
    model = ToyModel()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
    state = TrainState(step=0, params=variables["params"], batch_stats={}, opt_state=())
    b = 6
    labels = rng.integers(0, 7, b).astype(np.int32)
    mask = np.array([1, 1, 1, 1, 0, 0], bool)
    if layout == "center":
        batch = {"image": rng.normal(size=(b, 8, 8, 3)).astype(np.float32)}
        views = [batch["image"]]
    elif layout == "ten_crop":
        batch = {"image": rng.normal(size=(b, 10, 8, 8, 3)).astype(np.float32)}
        views = [batch["image"][:, k] for k in range(10)]
    else:
        batch = {f"image_{s}": rng.normal(size=(b, 2, s, s, 3)).astype(np.float32) for s in (6, 9)}
        views = [batch[k][:, i] for k in batch for i in range(2)]
    sums = jax.jit(make_eval_step(model))(state, dict(batch, label=labels, mask=mask))
    expected = reference_sums(model, {"params": variables["params"]}, views, labels, mask)
    for key, value in expected.items():
        assert float(sums[key]) == pytest.approx(value, rel=1e-5), key
    assert np.asarray(sums["class_count"]).sum() == 4
    assert np.asarray(sums["class_top1"]).sum() == pytest.approx(expected["top1"])


def test_stored_config_and_overrides():
    stored = tiny_config().to_dict()
    stored["schedule"]["boundaries"] = [3.0]  # as JSON stores tuples
    config = resolve_config(Request(overrides={"eval_batch_size": 40}), stored)
    assert config.schedule.boundaries == (3.0,) and config.eval_batch_size == 40
    assert config.model.name == MODEL and config.schedule.length == 6.0
    from_file = resolve_config(Request(config=base_config(), overrides={"seed": 7}), stored)
    assert from_file.schedule.length == 30.0 and from_file.seed == 7  # the file replaces `stored`
    with pytest.raises(ConfigError, match="'data.retired_field'"):
        resolve_config(Request(), dict(stored, data=dict(stored["data"], retired_field=1)))


def test_no_workdir_and_no_checkpoint(tmp_path):
    with pytest.raises(EvalError, match="no workdir"):
        run(Request(workdir=str(tmp_path / "missing")))
    with pytest.raises(EvalError, match="no checkpoint in"):
        run(Request(workdir=str(tmp_path)))
    with pytest.raises(EvalError, match="give --workdir"):
        run(Request())
    with pytest.raises(EvalError, match="--step and --all exclude each other"):
        run(Request(workdir=str(tmp_path), step=3, all_steps=True))


def test_step_not_kept(run_dir):
    with pytest.raises(EvalError, match=r"no checkpoint step 9 .* kept steps: \[3, 6\]"):
        run(Request(workdir=run_dir, step=9))


def test_damaged_latest_names_file_and_offers_previous(copy_of):
    victim = state_file(copy_of, 6)
    with open(victim, "r+b") as f:
        f.truncate(100)
    with pytest.raises(EvalError) as err:
        run(Request(workdir=copy_of, name="eval_check"))
    message = str(err.value)
    assert "latest checkpoint step 6 is damaged" in message and victim in message
    assert "100 bytes" in message and "--step=3" in message
    assert not os.path.exists(os.path.join(copy_of, "eval_check"))


@pytest.mark.parametrize("damage", ["flip", "delete", "meta"])
def test_damaged_step_is_never_reported_good(copy_of, damage):
    """--all evaluates the intact step 6 and refuses step 3."""
    if damage == "flip":  # same size, altered bytes: Orbax itself would restore this silently
        victim = state_file(copy_of, 3)
        overwrite_middle(victim)
        reason = "contents differ"
    elif damage == "delete":
        victim = state_file(copy_of, 3, largest=False)
        os.remove(victim)
        reason = "missing"
    else:
        victim = os.path.join(copy_of, "checkpoints", "3", "meta", "metadata")
        with open(victim, "w") as f:
            f.write("{")
        reason = "differ|bytes"
    with pytest.raises(EvalError, match=r"steps \[3\] are damaged or unverified"):
        run(Request(workdir=copy_of, all_steps=True, name="eval_check"))
    written = os.listdir(os.path.join(copy_of, "eval_check"))
    assert written == ["6.json"]
    with pytest.raises(EvalError, match=reason) as err:
        run(Request(workdir=copy_of, step=3, name="eval_check"))
    assert victim in str(err.value)


def test_checkpoint_without_record_is_refused_unless_allowed(copy_of):
    """The issue's reproduction: no integrity record and 8 altered bytes, which Orbax alone
    restores (to a 9 % model). It is refused, naming the step and the reason, unless allowed."""
    os.remove(os.path.join(copy_of, "checkpoints", "6", CHECKSUMS))
    overwrite_middle(state_file(copy_of, 6))
    with pytest.raises(EvalError) as err:
        run(Request(workdir=copy_of, name="eval_check"))
    message = str(err.value)
    assert "latest checkpoint step 6 is unverified" in message
    assert os.path.join("6", CHECKSUMS) + ": no integrity record" in message
    assert "--step=3" in message and "--allow_unverified_checkpoint" in message
    assert not os.path.exists(os.path.join(copy_of, "eval_check"))
    [record] = run(Request(workdir=copy_of, allow_unverified=True, name="eval_check"))
    assert record["step"] == 6 and record["checked"].startswith("unverified: no integrity record")


def test_unreadable_record_is_unverified(copy_of):
    with open(os.path.join(copy_of, "checkpoints", "6", CHECKSUMS), "w") as f:
        f.write('{"state/')
    with pytest.raises(EvalError, match=r"step 6 is unverified: .*unreadable integrity record"):
        run(Request(workdir=copy_of, step=6))
    with pytest.raises(EvalError, match=r"steps \[6\] are damaged or unverified"):
        run(Request(workdir=copy_of, all_steps=True, name="eval_check"))
    assert os.listdir(os.path.join(copy_of, "eval_check")) == ["3.json"]


def test_allowed_unverified_checkpoint_still_fails_when_unreadable(copy_of):
    os.remove(os.path.join(copy_of, "checkpoints", "6", CHECKSUMS))
    with open(state_file(copy_of, 6), "r+b") as f:
        f.truncate(100)
    with pytest.raises(EvalError, match=r"step 6 is damaged: .*/6/state: it cannot be restored"):
        run(Request(workdir=copy_of, step=6, allow_unverified=True))


def test_config_that_does_not_fit_names_array_and_shapes(run_dir):
    with pytest.raises(EvalError) as err:
        run(Request(workdir=run_dir, overrides={"model.name": "cifar_resnet32"}))
    message = str(err.value)
    assert ("params/stage1_block2/bn1/bias: absent in the checkpoint, shape (16,) in the target"
            in message)
    assert f"model.name='cifar_resnet32' (stored: '{MODEL}')" in message
    problem = first_mismatch({"params/head/kernel": (64, 10), "step": ()},
                             {"step": (), "params/head/kernel": (64, 5)})
    assert problem == ("params/head/kernel: shape (64, 10) in the checkpoint, shape (64, 5) in "
                       "the target")


def test_restore_latest_under_the_stored_config_or_a_given_one(run_dir):
    """The restore path eval.py and the tests share: the latest step by default, built from the
    config stored with it; a given config replaces it (and a misfit names the differing fields)."""
    checkpoints = os.path.join(run_dir, "checkpoints")
    restored = restore(checkpoints, experiments=ExperimentCache(jax.devices()[:1]))
    assert (restored.meta["step"], int(restored.state.step), restored.checked) == (6, 6, VERIFIED)
    assert restored.experiment.mesh.size == 1
    assert restored.experiment.config.model.name == restored.meta["config"]["model"]["name"]
    other = tiny_config()
    other.model.name = "cifar_resnet32"
    with pytest.raises(IncompatibleCheckpointError,
                       match=rf"model.name='cifar_resnet32' \(stored: '{MODEL}'\)"):
        restore(checkpoints, 3, other)


def test_watch_evaluates_new_checkpoints_until_the_final_step(run_dir, copy_of):
    checkpoints = os.path.join(copy_of, "checkpoints")
    shutil.rmtree(os.path.join(checkpoints, "6"))

    def trainer_writes_step_6():  # as Orbax does: a temporary folder, then a rename
        time.sleep(1.0)
        tmp = os.path.join(checkpoints, "6.orbax-checkpoint-tmp")
        shutil.copytree(os.path.join(run_dir, "checkpoints", "6"), tmp)
        os.rename(tmp, os.path.join(checkpoints, "6"))

    writer = threading.Thread(target=trainer_writes_step_6)
    writer.start()
    records = run(Request(workdir=copy_of, watch=True, poll_seconds=0.2, watch_timeout=60))
    writer.join()
    assert [r["step"] for r in records] == [3, 6]


def test_watch_stops_after_timeout(copy_of):
    shutil.rmtree(os.path.join(copy_of, "checkpoints", "6"))
    start = time.monotonic()
    records = run(Request(workdir=copy_of, watch=True, poll_seconds=0.1, watch_timeout=0.5))
    assert [r["step"] for r in records] == [3]
    assert time.monotonic() - start < 30


def test_torchvision_weights(tmp_path):
    overrides = {"model.name": "resnet18", "data.dataset": "synthetic", "data.image_size": 16,
                 "data.num_eval_examples": 20, "eval_batch_size": 8, "global_batch_size": 8}
    model = create_model("resnet18", num_classes=10)
    template = jax.eval_shape(lambda: model.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)),
                                                 train=False))
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map_with_path(  # random weights, positive BN variances
        lambda path, leaf: (rng.uniform(0.5, 1.5, leaf.shape) if path[-1].key == "var" else
                            rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1]) or 1), leaf.shape)
                            ).astype(np.float32), template)
    weights = str(tmp_path / "resnet18.safetensors")
    save_file(flax_to_torchvision(variables), weights)
    [record] = run(Request(torchvision_weights=weights, workdir=str(tmp_path / "out"),
                           overrides={k: v for k, v in overrides.items() if k != "model.name"}))
    assert record["config"]["model"]["name"] == "resnet18"  # read off the weights
    pipeline = build_experiment(resolve_config(Request(overrides=overrides), None)).pipeline
    logits = jax.jit(lambda x: model.apply(variables, x, train=False))(pipeline.eval.images)
    labels = pipeline.eval.labels
    loss = -np.mean(np.asarray(jax.nn.log_softmax(logits))[np.arange(len(labels)), labels])
    assert record["metrics"]["count"] == 20
    assert record["metrics"]["top1"] == pytest.approx(np.mean(np.argmax(logits, -1) == labels))
    assert record["metrics"]["loss"] == pytest.approx(loss, rel=1e-5)
    assert os.path.exists(tmp_path / "out" / "eval_offline" / "torchvision_resnet18.json")
    with pytest.raises(EvalError, match="cannot load torchvision weights"):
        run(Request(torchvision_weights=weights, workdir=str(tmp_path / "out"),
                    overrides=dict(overrides, **{"model.name": "resnet34"})))
