"""Input pipelines by dataset name; see base.py for the contract every pipeline meets."""

from typing import Callable

from resnet_jax.data.base import Batch, HostSlice, Pipeline
from resnet_jax.data.embedded import digits_pipeline
from resnet_jax.data.synthetic import synthetic_pipeline

PipelineBuilder = Callable[..., Pipeline]

# dataset name -> builder(data_config, hosts, seed) -> Pipeline
BUILDERS: dict[str, PipelineBuilder] = {
    "digits": digits_pipeline,
    "synthetic": synthetic_pipeline,
}


def validate_data_config(data_config) -> None:
    """Raise ConfigError naming config.data fields that are not allowed (before any compute)."""
    from resnet_jax.config import ConfigError

    if data_config.dataset not in BUILDERS:
        raise ConfigError(f"config.data.dataset={data_config.dataset!r} is not allowed; expected one "
                          f"of {sorted(BUILDERS)}")
    if data_config.max_shift < 0:
        raise ConfigError(f"config.data.max_shift={data_config.max_shift} must be >= 0")


def build_pipeline(data_config, hosts: HostSlice, seed: int) -> Pipeline:
    """The pipeline of `data_config.dataset` for this process."""
    return BUILDERS[data_config.dataset](data_config, hosts, seed)


__all__ = ["BUILDERS", "Batch", "HostSlice", "Pipeline", "build_pipeline", "validate_data_config"]
