"""XLA's compiled memory of the train step, by compiling only: what the header and --dry_run
print."""

from itertools import islice

import jax
import numpy as np
import pytest

from resnet_jax import experiment, parallel, plan
from resnet_jax.compiled_memory import planned_train_step_memory, train_step_memory
from resnet_jax.data.base import stack_feeds
from train_cli import tiny_config

TRACE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                "/jax/core/compile/jaxpr_to_mlir_module_duration",
                "/jax/core/compile/backend_compile_duration")


def _config(placement: str):
    c = tiny_config()
    c.global_batch_size = c.eval_batch_size = 16
    c.data.placement = placement
    return c


def _nbytes(tree) -> int:
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("placement", ["host", "device"])
def test_the_feed_spec_is_what_the_pipeline_feeds(placement):
    pipeline = experiment.build_experiment(_config(placement)).pipeline
    feed = next(pipeline.train_feed())
    assert {k: (v.shape, v.dtype) for k, v in feed.items()} == pipeline.train_feed_spec()


def test_the_loop_reuses_the_executable_the_header_compiled():
    exp = experiment.build_experiment(_config("device"))
    memory = train_step_memory(exp)
    state = exp.create_train_state()
    events = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, _, **kw: events.append(name) if name in TRACE_EVENTS else None)
    feeds = parallel.global_batch(stack_feeds(list(islice(exp.pipeline.train_feed(), 1))),
                                  exp.mesh, steps_axis=True)
    jax.block_until_ready(exp.multi_step(state, exp.device_data(), feeds))
    assert events == []  # neither traced, lowered nor compiled again
    state_bytes = _nbytes(exp.abstract_train_state())
    read = {k: v for k, v in exp.device_data().items() if not k.startswith("eval_")}
    inputs = state_bytes + _nbytes(read) + _nbytes(feeds)  # XLA drops the unread eval split
    assert inputs <= memory.argument_bytes <= inputs + 4096  # alignment at most
    assert state_bytes <= memory.alias_bytes <= memory.output_bytes  # the state updated in place
    assert memory.temp_bytes > 0
    assert memory.total_bytes == (memory.argument_bytes + memory.output_bytes + memory.temp_bytes
                                  + memory.generated_code_bytes - memory.alias_bytes)


def test_the_planned_memory_needs_no_data_and_matches_a_host_run():
    config = _config("host")
    exp = experiment.build_experiment(config)
    planned = planned_train_step_memory(config, plan.plan_run(config))
    assert planned == train_step_memory(exp)
