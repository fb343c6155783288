"""An experiment: what a config builds before touching data, shared by training and evaluation.

`build_experiment(config)` validates the config against the devices present, then builds the mesh,
the input pipeline, the model, the schedule and optimizer, and the jitted init, train and eval steps.
"""

import dataclasses
import functools
from typing import Any, Callable

import jax

from resnet_jax import optim, parallel
from resnet_jax.config import model_options, validate_config
from resnet_jax.data import HostSlice, Pipeline, build_pipeline
from resnet_jax.models import create_model
from resnet_jax.models.summary import summarize_module
from resnet_jax.plan import RunPlan, resolve_steps_per_dispatch
from resnet_jax.steps import (TrainState, create_train_state, make_ema_step, make_eval_step,
                              make_multi_step, make_train_step, with_ema)

# The initialiser runs once: compiled unoptimised it builds in a fraction of the time (ResNet-20 on
# 2 CPU cores: 0.7 s instead of 22 s, nearly all of it XLA optimising threefry random-number code),
# with values within an ulp of the optimised build's.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# The key of the learning-rate schedule's numbers among the arrays the train step reads
# (Experiment.host_data): no pipeline names an array so.
SCHEDULE = "learning_rate_schedule"


@dataclasses.dataclass
class Experiment:
    """Everything a run builds from its config before touching data."""

    config: Any
    mesh: jax.sharding.Mesh
    pipeline: Pipeline
    model: Any
    total_steps: int
    init: Callable[[], TrainState]  # jitted create_train_state (+ with_ema), replicated output
    multi_step: Callable  # (state, device_data(), global feeds [n, B]) -> (state, metrics [n])
    eval_feed_step: Callable  # (state, device_data(), global eval feed) -> sums
    steps_per_dispatch: int
    _device_data: Any = None

    @property
    def steps_per_epoch(self) -> int:
        return self.pipeline.steps_per_epoch

    @functools.cached_property
    def plan(self) -> RunPlan:
        """The run's plan (header, --dry_run) read off what was built; the model is traced
        abstractly once, at the first call."""
        size, _, channels = self.pipeline.image_shape
        device = self.mesh.devices.flat[0]
        return RunPlan(self.config, self.pipeline.plan(),
                       summarize_module(self.model, self.config.model.name, size, channels),
                       self.mesh.size, jax.process_count(), device.device_kind,
                       self.pipeline.examples_on_devices, self.steps_per_dispatch)

    def host_data(self) -> dict[str, Any]:
        """What the compiled steps read besides the state and the feeds, on the host: the
        pipeline's device arrays and, under SCHEDULE, optim.schedule_arguments."""
        return {**self.pipeline.device_arrays(), SCHEDULE: optim.schedule_arguments(
            self.config.schedule, self.steps_per_epoch, self.config.global_batch_size)}

    def device_data(self) -> dict[str, Any]:
        """host_data(), replicated on the mesh (placed at the first call)."""
        if self._device_data is None:
            self._device_data = parallel.replicate(self.host_data(), self.mesh)
        return self._device_data

    def create_train_state(self) -> TrainState:
        """A freshly initialised, replicated train state (`init` compiled unoptimised)."""
        return self.init.lower().compile(INIT_COMPILER_OPTIONS)()

    def abstract_train_state(self) -> TrainState:
        """The train state's layout: jax.ShapeDtypeStruct leaves with their shardings."""
        return jax.eval_shape(self.init)


def jit_init(config, model, image_shape: tuple[int, int, int], steps_per_epoch: int,
             mesh: jax.sharding.Mesh) -> Callable[[], TrainState]:
    """steps.create_train_state from config.seed, with its EMA when config.ema_decay is set,
    jitted with its output replicated on `mesh`."""
    tx = optim.build_optimizer(config.optimizer, optim.learning_rate_schedule(
        config.schedule, steps_per_epoch, config.global_batch_size))

    def initial_state() -> TrainState:
        state = create_train_state(model, tx, image_shape, config.seed)
        return state if config.ema_decay is None else with_ema(state)

    return jax.jit(initial_state, out_shardings=parallel.replicated(mesh))


def jit_multi_step(config, model, batch_from_feed: Callable,
                   mesh: jax.sharding.Mesh) -> Callable:
    """The jitted k-step train call: (state, device arrays, feeds [k, B]) -> (state, metrics [k]),
    state donated and replicated, feeds split over the batch axis; `batch_from_feed` is the
    pipeline's train_batch_from_feed. The learning-rate schedule and the optimizer are built inside
    the call from the arrays' SCHEDULE numbers (optim.schedule_from_arguments), so they are
    arguments of the program, not constants in it. The step freezes the backbone
    (config.optimizer.freeze_backbone), accumulates micro-batches (config.accumulation_steps;
    unrolled on CPU, see steps.make_train_step) and updates the EMA (config.ema_decay) as the
    config says."""
    replicated = parallel.replicated(mesh)
    frozen = optim.backbone_mask if config.optimizer.freeze_backbone else None

    def multi_step(state, arrays, feeds):
        schedule = optim.schedule_from_arguments(config.schedule, arrays[SCHEDULE])
        step_fn = make_train_step(model, optim.build_optimizer(config.optimizer, schedule),
                                  schedule, config.label_smoothing, frozen,
                                  config.accumulation_steps, batch_shards=mesh.size,
                                  unroll_micro_batches=mesh.devices.flat[0].platform == "cpu")
        if config.ema_decay is not None:
            step_fn = make_ema_step(step_fn, config.ema_decay)
        return make_multi_step(step_fn, batch_from_feed)(state, arrays, feeds)

    return jax.jit(multi_step,
                   in_shardings=(replicated, replicated, parallel.steps_batch_sharded(mesh)),
                   out_shardings=(replicated, replicated), donate_argnums=(0,))


def build_experiment(config, devices=None, training: bool = True) -> Experiment:
    """Validate `config` against the devices present, then build model, data, optimizer and steps.

    With training=False (evaluation only) the train batch need not divide the device count.
    """
    mesh = parallel.make_mesh(devices)
    validate_config(config, device_count=mesh.size, process_count=jax.process_count(),
                    training=training)
    hosts = HostSlice(config.global_batch_size, config.eval_batch_size, jax.process_index(),
                      jax.process_count())
    pipeline = build_pipeline(config.data, hosts, config.seed)
    model = create_model(config.model.name, num_classes=pipeline.num_classes,
                         **model_options(config))
    replicated, batch = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    init = jit_init(config, model, pipeline.image_shape, pipeline.steps_per_epoch, mesh)
    multi_step = jit_multi_step(config, model, pipeline.train_batch_from_feed, mesh)
    eval_fn = make_eval_step(model)
    eval_feed_step = jax.jit(
        lambda state, arrays, feed: eval_fn(state, pipeline.eval_batch_from_feed(arrays, feed)),
        in_shardings=(replicated, replicated, batch), out_shardings=replicated)
    steps_per_dispatch = resolve_steps_per_dispatch(config, pipeline.examples_on_devices,
                                                    mesh.devices.flat[0].platform)
    return Experiment(config, mesh, pipeline, model,
                      optim.total_steps(config.schedule, pipeline.steps_per_epoch), init,
                      multi_step, eval_feed_step, steps_per_dispatch)
