"""The EMA of the weights (config.ema_decay) in the loop: evaluated beside the raw weights,
checkpointed and resumed exactly, evaluated by eval.py --ema, chosen by keep-best; its config
fields. The update rule itself is checked by hand in test_steps.py."""

import jax
import numpy as np
import pytest

from resnet_jax import offline_eval, storage
from resnet_jax.actions import StopRequest
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.config import base_config, validate_config
from resnet_jax.errors import ConfigError, EvalError
from resnet_jax.metric_writers import read_metrics
from resnet_jax.restore import ExperimentCache, restore
from resnet_jax.training import train_and_evaluate
from train_cli import assert_trees_equal, tiny_config


def ema_config():
    """The tiny run cut to 8 steps, evaluated at 4 and 8, with an EMA of decay 0.8."""
    c = tiny_config()
    c.schedule.length, c.schedule.boundaries = 8, (4.0,)
    c.log_every_steps = c.eval_every_steps = 4
    c.checkpoint_every_steps, c.async_checkpointing, c.steps_per_dispatch = 100, False, 1
    c.ema_decay, c.best_metric = 0.8, "ema_top1"
    return c


def final_weights(workdir):
    """(params, batch_stats, ema) of the latest checkpoint, as numpy."""
    state = restore(storage.path(workdir) / "checkpoints",
                    experiments=ExperimentCache(jax.devices()[:1])).state
    return jax.tree.map(np.asarray, (state.params, state.batch_stats, state.ema))


def test_ema_is_evaluated_checkpointed_and_resumed_exactly(tmp_path, monkeypatch, capsys):
    devices, whole, resumed = jax.devices()[:1], tmp_path / "whole", tmp_path / "resumed"
    train_and_evaluate(ema_config(), str(whole), devices=devices)
    evals = read_metrics(str(whole), "eval")
    assert [r["step"] for r in evals] == [4, 8]
    assert all(0 <= r["ema_top1"] <= 1 and np.isfinite(r["ema_loss"]) for r in evals)
    assert evals[-1]["ema_loss"] != evals[-1]["loss"]  # another set of weights
    out = capsys.readouterr().out
    assert "eval at step 8: loss" in out and "; EMA loss" in out and "eval EMA: final" in out
    assert not (whole / "profile").exists()  # nothing traced without profile_steps

    # eval.py --ema evaluates the checkpoint's EMA weights: the loop's ema_ metrics at step 8.
    (record,) = offline_eval.run(offline_eval.Request(workdir=str(whole), ema=True,
                                                      devices=devices))
    assert record["weights"] == "ema" and record["name"] == "eval_offline_ema"
    assert record["metrics"]["loss"] == pytest.approx(evals[-1]["ema_loss"], rel=1e-5)
    assert record["metrics"]["top1"] == pytest.approx(evals[-1]["ema_top1"], abs=1e-9)

    # Stopped after step 3 (the stop request of the 3rd dispatch), saved, resumed: bit for bit
    # the uninterrupted run, EMA included.
    monkeypatch.setattr(StopRequest, "requested", lambda self, dispatch: dispatch == 3)
    stopped = train_and_evaluate(ema_config(), str(resumed), devices=devices)
    assert stopped["preempted"] and stopped["step"] == 3
    monkeypatch.undo()
    train_and_evaluate(ema_config(), str(resumed), devices=devices)
    assert_trees_equal(final_weights(resumed), final_weights(whole))


def test_eval_ema_refuses_a_checkpoint_without_ema_in_one_line(reference_run):
    workdir, _ = reference_run
    with pytest.raises(EvalError, match=r"--ema: checkpoint step 40 in .* has no EMA weights"):
        offline_eval.run(offline_eval.Request(workdir=str(workdir), ema=True,
                                              devices=jax.devices()[:1]))


def test_keep_best_chooses_by_the_configured_metric(tmp_path):
    """Latest 2 kept plus the best: by raw top-1 step 1, by EMA top-1 step 2."""
    metrics = [(0.9, 0.1), (0.1, 0.9), (0.2, 0.2), (0.3, 0.3), (0.4, 0.4)]
    for best_metric, kept in (("eval_top1", [1, 4, 5]), ("eval_ema_top1", [2, 4, 5])):
        checkpointer = Checkpointer(tmp_path / best_metric, keep=2, async_save=False,
                                    best_metric=best_metric)
        for step, (raw, ema) in enumerate(metrics, start=1):
            checkpointer.save(step, {"w": np.full((2,), step, np.float32)}, {"step": step},
                              {"eval_top1": raw, "eval_ema_top1": ema})
        assert checkpointer.all_steps() == kept
        checkpointer.close()


@pytest.mark.parametrize("field, value, message", [
    ("ema_decay", 1.0, r"config.ema_decay=1.0 is not allowed; expected a float in \(0, 1\)"),
    ("ema_decay", 0.0, r"config.ema_decay=0.0 is not allowed"),
    ("best_metric", "top5", r"config.best_metric='top5' is not allowed; expected one of"),
    ("best_metric", "ema_top1", r"best_metric='ema_top1' needs config.ema_decay"),
])
def test_bad_ema_fields_are_rejected_naming_the_field(field, value, message):
    config = base_config()
    config[field] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(config)
