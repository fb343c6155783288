"""A run's checkpoint restored with the experiment its config builds: the one restore path of
offline evaluation (eval.py) and the tests.

`restore(checkpoints, step)` verifies checkpoint `step`, builds the experiment from the config
stored with it (or one the caller derives from that, or gives outright) and places the state on
the experiment's devices, whatever the device count it was written on.
"""

import json
from typing import Any, Callable, NamedTuple, Optional, Union

import ml_collections

from resnet_jax import storage
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.config import config_from_dict, flat_fields
from resnet_jax.errors import ConfigError, IncompatibleCheckpointError
from resnet_jax.experiment import Experiment, build_experiment
from resnet_jax.steps import TrainState

# What restore builds the experiment from: a config used as is, or a function of the config dict
# stored with the checkpoint (None when it has none), or None for the stored config itself.
ConfigSource = Union[ml_collections.ConfigDict,
                     Callable[[Optional[dict]], ml_collections.ConfigDict], None]


class RestoredRun(NamedTuple):
    experiment: Experiment
    state: TrainState  # placed replicated on experiment.mesh
    meta: dict  # as saved by the training loop: step, epoch, config, metrics, ...
    checked: str  # checkpoint.VERIFIED, or "unverified: <reason>" when allowed


class ExperimentCache:
    """Evaluation-only experiments (`build_experiment(..., training=False)`) on `devices` (default:
    all), one per distinct config, so that restoring several checkpoints compiles the steps once."""

    def __init__(self, devices=None):
        self.devices = devices
        self._built: dict[str, Experiment] = {}

    def get(self, config: ml_collections.ConfigDict) -> Experiment:
        key = json.dumps(config.to_dict(), sort_keys=True, default=str)
        if key not in self._built:
            self._built[key] = build_experiment(config, self.devices, training=False)
        return self._built[key]


def changed_fields(config: ml_collections.ConfigDict, stored: Optional[dict]) -> str:
    """A sentence listing 'field=value (stored: value)' for each field of `config` differing from
    the `stored` config dict; empty when none differs or nothing fitting the schema is stored."""
    if not stored:
        return ""
    try:
        before = flat_fields(config_from_dict(stored).to_dict())
    except ConfigError:
        return ""
    now = flat_fields(config.to_dict())
    diffs = [f"{k}={now[k]!r} (stored: {before.get(k)!r})" for k in now if now[k] != before.get(k)]
    if not diffs:
        return ""
    return f" The config differs from the one stored with it in: {', '.join(diffs)}."


def restore(checkpoints: Union[Checkpointer, storage.PathLike], step: Optional[int] = None,
            config: ConfigSource = None, experiments: Optional[ExperimentCache] = None,
            allow_unverified: bool = False) -> RestoredRun:
    """Checkpoint `step` (default: the latest) of `checkpoints` (a Checkpointer, or the folder of
    step folders, e.g. `<workdir>/checkpoints`, opened read-only), verified against its integrity
    record and restored into the experiment `experiments` (default: a new cache on all devices)
    builds from `config`.

    Raises DamagedCheckpointError, UnverifiedCheckpointError (unless `allow_unverified`),
    IncompatibleCheckpointError naming the first array that does not fit and the config fields
    that differ from the stored ones, ConfigError for a stored config this code cannot read, and
    FileNotFoundError when `step` is None and there is no checkpoint.
    """
    if not isinstance(checkpoints, Checkpointer):
        checkpointer = Checkpointer(checkpoints, read_only=True)
        try:
            return restore(checkpointer, step, config, experiments, allow_unverified)
        finally:
            checkpointer.close()
    experiments = experiments or ExperimentCache()
    if step is None:
        step = checkpoints.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {checkpoints.directory}")
    built: dict[str, Any] = {}

    def target(meta: dict) -> TrainState:
        built["stored"] = meta.get("config")
        if isinstance(config, ml_collections.ConfigDict):
            built["config"] = config
        elif config is None:
            built["config"] = config_from_dict(built["stored"] or {})
        else:
            built["config"] = config(built["stored"])
        built["experiment"] = experiments.get(built["config"])
        return built["experiment"].abstract_train_state()

    try:
        restored = checkpoints.restore(step, target, allow_unverified)
    except IncompatibleCheckpointError as e:
        raise IncompatibleCheckpointError(
            f"{e}.{changed_fields(built['config'], built['stored'])}") from None
    return RestoredRun(built["experiment"], restored.state, restored.meta, restored.checked)
