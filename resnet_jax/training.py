"""The training loop: a run built once from its config, then steps dispatched to the devices with
the periodic work (log, eval, checkpoint, stop requests) declared once as actions (actions.py).

`train_and_evaluate(config, workdir)` trains, evaluates and checkpoints, and resumes by itself from the
newest good checkpoint in `workdir/checkpoints`; a run without one starts from the pretrained
weights config.init_from names, if any (pretrained.py). The hot loop dispatches steps without
waiting for the devices, `steps_per_dispatch` of them per dispatch where no action falls due
inside; metrics stay on device until an action fetches them.
"""

import contextlib
import json
from typing import Optional

import jax

from resnet_jax import parallel, pretrained, storage
from resnet_jax.actions import (Action, CheckStop, Evaluate, Profile, SaveCheckpoint, StopRequest,
                                Tick, TrainLog, dispatch_length)
from resnet_jax.checkpoint import VERIFIED, Checkpointer, resume_step
from resnet_jax.compiled_memory import train_step_memory
from resnet_jax.config import validate_config
from resnet_jax.console import Console, final_summary, header
from resnet_jax.data.base import stack_feeds
from resnet_jax.experiment import Experiment, build_experiment
from resnet_jax.metric_writers import MetricWriter, read_metrics
from resnet_jax.phase_clock import PhaseClock, describe


def train_and_evaluate(config, workdir: str, devices=None, allow_unverified_checkpoint=False,
                       start_fresh_if_no_good_checkpoint=False) -> dict:
    """Train `config` in `workdir` (a local path or gs://...), resuming from its newest good
    checkpoint (see checkpoint.resume_step for the two flags); returns the final eval metrics with
    the step reached, whether the run stopped early on a signal, whether it is complete, and the
    session's wall time split by phase ("time", phase_clock.PhaseClock.split). A run that is
    already complete prints its summary and returns at once."""
    clock = PhaseClock()
    # Checked before the checkpoints are read; build_experiment checks again with the
    # preprocessing filled in, which depends on whether the run resumes.
    validate_config(config, device_count=len(devices or jax.devices()),
                    process_count=jax.process_count())
    checkpointer = Checkpointer(storage.path(workdir) / "checkpoints", config.keep_checkpoints,
                                async_save=config.async_checkpointing,
                                best_metric=f"eval_{config.best_metric}")
    start = resume_step(checkpointer, allow_unverified_checkpoint,
                        start_fresh_if_no_good_checkpoint)
    source = None
    if start is None:  # init_from applies only to a run without checkpoints of its own
        source = pretrained.open_source(config)
        config, preprocessing = pretrained.with_source_preprocessing(config, source)
    else:
        config, preprocessing = pretrained.with_run_preprocessing(
            config, checkpointer.restore_meta(start)["config"])
    exp = build_experiment(config, devices)
    is_main = jax.process_index() == 0
    if is_main:
        storage.write_atomic(storage.path(workdir) / "config.json",
                             json.dumps(config.to_dict(), indent=2, default=str))
    console = Console(exp.total_steps, start or 0)
    complete = start is not None and start >= exp.total_steps
    memory = loaded = None
    if source is not None:  # read before anything compiles: a source that does not fit is one line
        with clock.phase("checkpoint"):
            loaded = source.load(exp, config.init_head)
    if not complete:
        with clock.phase("compile"):  # jit's cache keeps it for the first full dispatch
            memory = train_step_memory(exp)
    console.print(header(exp.plan, workdir, start, memory))
    if config.init_from:
        console.print(preprocessing)
        if start is not None:
            console.print("init:     config.init_from not loaded: the run resumes from its own "
                          "checkpoint")
    if complete:
        checkpointer.close()
        console.close()
        console.print(f"{workdir} is complete: nothing to train.\n" + _summary(
            workdir, start, exp, clock, checkpointer))
        return {"step": start, "preempted": False, "complete": True, "time": clock.split()}
    if start is None:
        if loaded is not None:
            console.print(loaded.note)
        with clock.phase("compile"):  # the initialiser, compiled and run once
            state, start = exp.create_train_state(), 0
        if loaded is not None:
            state = loaded.into(state)
    else:
        with clock.phase("checkpoint"):
            restored = checkpointer.restore(start, exp.abstract_train_state(),
                                            allow_unverified_checkpoint)
        state = restored.state
        if restored.checked != VERIFIED:
            console.print(f"restored step {start} {restored.checked}")

    writer = MetricWriter(workdir, enabled=is_main, tensorboard=config.tensorboard)
    log = TrainLog(exp, writer, console, checkpointer, clock)
    evaluation = Evaluate(exp, writer, console)
    profile = (Profile(config.profile_steps, workdir, clock)
               if config.profile_steps is not None and is_main else None)
    try:
        with StopRequest() as stop:
            actions = [CheckStop(stop), *([profile] if profile else []), log, evaluation,
                       SaveCheckpoint(exp, checkpointer)]
            tick = _train(exp, state, start, actions, log, clock, profile)
    finally:
        if profile:
            with clock.phase("profile"):
                profile.close()
        console.close()
        writer.close()
        with clock.phase("checkpoint"):
            checkpointer.wait()
            checkpointer.close()
    if tick.stopping:
        console.print(f"Stop requested: saved step {tick.step}; run the same command to resume.")
    result = {"step": tick.step, "preempted": tick.stopping, "complete": tick.last,
              "time": clock.split()}
    if evaluation.latest is not None:
        result["eval"] = evaluation.latest
    console.print(_summary(workdir, tick.step, exp, clock, checkpointer))
    return result


def _train(exp: Experiment, state, step: int, actions: list[Action], log: TrainLog,
           clock: PhaseClock, profile: Optional[Profile] = None) -> Tick:
    """Dispatch the steps after `step` until the last or a stop request, running the actions due
    after each dispatch, each piece of work timed by `clock`; returns the final tick. `log` is the
    action holding the step metrics; `profile`, when given, starts its trace and annotates the
    dispatches it traces."""
    feeds = exp.pipeline.train_feed(step)
    arrays = exp.device_data()
    compiled: set[int] = set()
    tick = Tick(step, last=False, dispatches=0)
    while not (tick.last or tick.stopping):
        n = dispatch_length(tick.step, exp.steps_per_dispatch, actions, exp.total_steps)
        compiling = n not in compiled  # jit compiles a new dispatch length inside the call
        with profile.dispatch(tick.step, n) if profile else contextlib.nullcontext():
            with clock.phase("input_wait"):
                local = stack_feeds([next(feeds) for _ in range(n)])
                feed = parallel.global_batch(local, exp.mesh, steps_axis=True)
            with clock.phase("compile" if compiling else "steps"):
                state, metrics = exp.multi_step(state, arrays, feed)
        log.add(tick.step + 1, n, metrics)
        tick = Tick(tick.step + n, tick.step + n == exp.total_steps, tick.dispatches + 1)
        checked = compiling  # the step metrics are fetched and checked at most once per tick
        if compiling:  # keep the compilation out of the throughput window
            compiled.add(n)
            with clock.phase("steps"):
                log.check()
            log.restart_window()
        for action in actions:
            if action.due(tick):
                if action.reads_state and not checked:
                    with clock.phase("steps"):  # waits for the devices to finish the dispatches
                        log.check()
                    checked = True
                with clock.phase(action.phase):
                    action(tick, state)
    return tick


def _summary(workdir: str, step: int, exp: Experiment, clock: PhaseClock,
             checkpointer: Checkpointer) -> str:
    """The final summary of the run in `workdir` (console.final_summary), on process 0."""
    if jax.process_index() != 0:
        return ""
    split = clock.split()
    return final_summary(workdir, step, exp.total_steps, split["wall"], read_metrics(workdir),
                         str(checkpointer.step_dir(step)), describe(split))
