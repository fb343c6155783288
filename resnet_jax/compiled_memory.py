"""XLA's memory for a run's train step, per device, known by compiling it (nothing runs).

`train_step_memory(exp)` compiles the experiment's own `multi_step` for `exp.steps_per_dispatch`
steps on abstract inputs (jax.ShapeDtypeStruct with the run's shardings): the start-up header
prints it. jit keeps the executable in its cache, so the loop's first dispatch of that length does
not compile again. `planned_train_step_memory(config, plan)` does the same without a dataset, for
--dry_run and `benchmark --max_batch`: the model's train step on a host feed of images, uint8
normalised in the step for file-backed datasets, float32 for the in-memory ones (examples held on
the devices would add their arrays, and their batch gather, to this figure).

The figures are XLA's `memory_analysis()` of the compiled executable, per device: arguments
(train state, device arrays, feeds), outputs (new state, metrics), the temporary buffer
(activations, gradients, scratch), the generated code, and the bytes outputs share with donated
arguments (the train state updated in place), counted once in the total.
"""

import dataclasses
from typing import Optional

import jax
import numpy as np

from resnet_jax import optim, parallel
from resnet_jax.config import model_options
from resnet_jax.data import host_feed_dtype
from resnet_jax.data.base import Pipeline, host_feed_spec
from resnet_jax.data.on_device import normalize
from resnet_jax.experiment import SCHEDULE, Experiment, jit_init, jit_multi_step
from resnet_jax.models import create_model
from resnet_jax.plan import RunPlan


# What is compiled only to be measured (--dry_run, --max_batch) skips the backend's code
# optimisation: XLA assigns buffers before it, so the figures are those of the optimised build
# (tests/test_compiled_memory.py compares them) at a fraction of the compile time on CPU.
MEASURE_ONLY_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class CompiledMemory:
    """Bytes per device of one compiled executable, as XLA's memory_analysis gives them."""

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    generated_code_bytes: int
    alias_bytes: int  # outputs written into donated arguments

    @property
    def total_bytes(self) -> int:
        """What the call needs on a device: arguments, outputs not aliased, temp and code."""
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.generated_code_bytes)

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}

    def describe(self) -> str:
        """One line: the total and its parts in GiB or MiB."""
        return (f"{format_bytes(self.total_bytes)} per device (arguments "
                f"{format_bytes(self.argument_bytes)}, outputs {format_bytes(self.output_bytes)} "
                f"of which {format_bytes(self.alias_bytes)} in place of donated arguments, temp "
                f"{format_bytes(self.temp_bytes)}, code {format_bytes(self.generated_code_bytes)})")


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def of_compiled(compiled) -> Optional[CompiledMemory]:
    """The memory of a jax Compiled, or None where the backend gives no analysis."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return CompiledMemory(stats.argument_size_in_bytes, stats.output_size_in_bytes,
                          stats.temp_size_in_bytes, stats.generated_code_size_in_bytes,
                          stats.alias_size_in_bytes)


def _abstract_feeds(spec: dict[str, tuple[tuple[int, ...], np.dtype]], steps: int,
                    global_batch: int, mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """[steps, global_batch, ...] feeds of a host-local feed `spec`, sharded as the loop shards
    them (parallel.global_batch)."""
    sharding = parallel.steps_batch_sharded(mesh)
    return {k: jax.ShapeDtypeStruct((steps, global_batch, *shape[1:]), dtype, sharding=sharding)
            for k, (shape, dtype) in spec.items()}


def _abstract_replicated(arrays, mesh):
    """jax.ShapeDtypeStruct leaves, replicated on `mesh`, of a pytree of host arrays."""
    sharding = parallel.replicated(mesh)
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v), v.dtype, sharding=sharding),
                        arrays)


def train_step_memory(exp: Experiment) -> Optional[CompiledMemory]:
    """Compile `exp.multi_step` for one full dispatch on abstract inputs; its memory per device."""
    arrays = _abstract_replicated(exp.host_data(), exp.mesh)
    feeds = _abstract_feeds(exp.pipeline.train_feed_spec(), exp.steps_per_dispatch,
                            exp.config.global_batch_size, exp.mesh)
    return of_compiled(exp.multi_step.lower(exp.abstract_train_state(), arrays, feeds).compile())


def planned_train_step_memory(config, plan: RunPlan, devices=None) -> Optional[CompiledMemory]:
    """The memory per device of `config`'s train step on a host feed, for `plan` (plan.plan_run),
    on `devices` (default: the first plan.device_count devices); needs no data."""
    devices = jax.devices()[:plan.device_count] if devices is None else devices
    mesh = parallel.make_mesh(devices)
    model = create_model(config.model.name, num_classes=plan.data.num_classes,
                         **model_options(config))
    dtype = host_feed_dtype(config.data)
    if dtype == np.uint8:  # normalised in the step

        def batch_from_feed(arrays, feed, step):
            return {"image": normalize(feed["image"], 0.0, 1.0), "label": feed["label"]}
    else:
        batch_from_feed = Pipeline.train_batch_from_feed
    multi_step = jit_multi_step(config, model, batch_from_feed, mesh)
    state = jax.eval_shape(jit_init(config, model, plan.data.image_shape, plan.steps_per_epoch,
                                    mesh))
    arrays = _abstract_replicated({SCHEDULE: optim.schedule_arguments(
        config.schedule, plan.steps_per_epoch, config.global_batch_size)}, mesh)
    batch = config.global_batch_size
    feeds = _abstract_feeds(host_feed_spec(batch, plan.data.image_shape, dtype),
                            plan.steps_per_dispatch, batch, mesh)
    compiled = multi_step.lower(state, arrays, feeds).compile(MEASURE_ONLY_COMPILER_OPTIONS)
    return of_compiled(compiled)
