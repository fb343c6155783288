"""The training loop: config -> model, data, optimizer -> jit-compiled steps over the mesh -> a run.

`train_and_evaluate(config, workdir)` trains, evaluates and checkpoints, and resumes by itself from the
latest complete checkpoint in `workdir/checkpoints`. The hot loop dispatches steps without waiting for
the devices, `steps_per_dispatch` of them per dispatch where no log, eval or checkpoint step falls
inside; metrics stay on device until such a step fetches them.
"""

import json
import signal
import threading
import time
from typing import Any, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from resnet_jax import parallel, storage
from resnet_jax.checkpoint import VERIFIED, Checkpointer, resume_step
from resnet_jax.console import Console, final_summary, format_duration, header, plan_run
from resnet_jax.divergence import divergence_error
from resnet_jax.evaluation import evaluate
from resnet_jax.experiment import Experiment, build_experiment
from resnet_jax.metric_writers import MetricWriter, read_metrics
from resnet_jax.steps import TrainState

# Dense bfloat16 peak FLOP/s per device, by a substring of jax's device_kind (for MFU); the first
# matching key wins, so more specific keys come first.
PEAK_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
              "TPU v4": 275e12, "TPU v5p": 459e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12}

class _StopRequest:
    """Set by SIGTERM (preemption) or the first Ctrl-C; the loop then checkpoints and returns.

    In a multi-process run JAX's preemption notifier receives SIGTERM and every process stops at the
    same step (reached_preemption_sync_point); the signal handlers are then left to JAX.
    """

    def __init__(self):
        self.event = threading.Event()
        self._previous = {}

    def _handle(self, signum, frame):
        self.event.set()
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, dispatch: int) -> bool:
        """Whether to stop after the `dispatch`-th dispatch of this session (1, 2, ...): JAX's sync
        point is one more than the largest count any process reported, so it counts calls."""
        if jax.process_count() > 1:
            return bool(multihost_utils.reached_preemption_sync_point(dispatch))
        return self.event.is_set()


def peak_flops(device_kind: str) -> Optional[float]:
    """Dense bfloat16 peak FLOP/s of a `device_kind` device, or None where unknown (CPUs)."""
    return next((v for k, v in PEAK_FLOPS.items() if k in device_kind), None)


class _TrainLogger:
    """Holds the device metrics of dispatched steps until a flush; then checks them, averages and
    writes them."""

    def __init__(self, exp: Experiment, writer: MetricWriter, console: Console,
                 train_flops_per_image: float, checkpointer: Checkpointer):
        self.exp, self.writer, self.console = exp, writer, console
        self.checkpointer = checkpointer
        self.pending: list[tuple[int, dict]] = []  # (first step, metrics stacked [n]) per dispatch
        self.restart_window()
        self.flops = train_flops_per_image
        self.peak = peak_flops(jax.devices()[0].device_kind)

    def add(self, first_step: int, steps: int, metrics: dict) -> None:
        """The metrics of steps first_step .. first_step + steps - 1, each stacked to [steps]."""
        self.pending.append((first_step, metrics))
        self.window_steps += steps
        self.console.advance(steps)

    def check(self) -> None:
        """Fetch pending metrics; raise NonFiniteLossError naming the first bad step."""
        fetched = jax.device_get(self.pending)
        for first_step, m in fetched:
            finite = np.logical_and.reduce(list(m["finite"].values()))
            if not finite.all():
                i = int(np.argmin(finite))
                raise divergence_error(first_step + i, jax.tree.map(lambda x: x[i], m),
                                       self.checkpointer)
        self.pending = fetched

    def flush(self, step: int) -> None:
        self.check()
        if not self.pending:
            return
        mean = {k: float(np.mean(np.concatenate([m[k] for _, m in self.pending])))
                for k in self.pending[0][1] if k != "finite"}
        mean["lr"] = float(self.pending[-1][1]["lr"][-1])
        mean["epoch"] = step / self.exp.steps_per_epoch
        speed = ""
        if self.window_steps:  # empty right after the compile step
            step_time = (time.perf_counter() - self.window_start) / self.window_steps
            images = self.exp.config.global_batch_size / step_time
            mean.update(step_time=step_time, images_per_sec=images,
                        images_per_sec_per_device=images / self.exp.mesh.size)
            if self.peak:
                mean["mfu"] = images * self.flops / (self.peak * self.exp.mesh.size)
            eta = (self.exp.total_steps - step) * step_time
            speed = (f" | {images:,.0f} img/s ({images / self.exp.mesh.size:,.0f}/device) "
                     f"{1000 * step_time:.1f} ms/step | ETA {format_duration(eta)}")
        self.writer.write(step, "train", mean)
        self.console.print(f"step {step:>7}/{self.exp.total_steps} epoch {mean['epoch']:6.2f} | "
                           f"loss {mean['loss']:.4f} top1 {100 * mean['top1']:6.2f}% "
                           f"lr {mean['lr']:.4g}{speed}")
        self.pending = []
        self.restart_window()

    def restart_window(self) -> None:
        self.window_start, self.window_steps = time.perf_counter(), 0


def _stack(feeds: list[dict]) -> dict:
    """The feeds of consecutive steps stacked on a new leading axis (one feed: a view, no copy)."""
    if len(feeds) == 1:
        return {k: v[None] for k, v in feeds[0].items()}
    return {k: np.stack([f[k] for f in feeds]) for k in feeds[0]}


def _dispatch_length(step: int, steps_per_dispatch: int, config, eval_every: int,
                     total_steps: int) -> int:
    """Steps the dispatch after `step` runs: `steps_per_dispatch` when the next log, eval or
    checkpoint step (or the end) is at least that far, else 1, so that every such step ends a
    dispatch (two compiled lengths at most)."""
    following = [(step // every + 1) * every
                 for every in (config.log_every_steps, eval_every, config.checkpoint_every_steps)]
    return steps_per_dispatch if min(following + [total_steps]) - step >= steps_per_dispatch else 1


def restore_checkpoint(config, workdir: str, step: Optional[int] = None,
                       devices=None) -> tuple[Experiment, TrainState, dict]:
    """(experiment, state, meta) of checkpoint `step` (default: the latest) of the run in `workdir`,
    verified, placed on `devices` (default: all) whatever the device count it was written on."""
    exp = build_experiment(config, devices)
    checkpointer = Checkpointer(storage.path(workdir) / "checkpoints", read_only=True)
    try:
        step = checkpointer.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints")
        restored = checkpointer.restore(step, exp.abstract_train_state())
    finally:
        checkpointer.close()
    return exp, restored.state, restored.meta


def _meta(exp: Experiment, step: int, metrics: Optional[dict] = None) -> dict:
    return {"step": step, "epoch": step // exp.steps_per_epoch,
            "position_in_epoch": step % exp.steps_per_epoch,
            "examples_seen": step * exp.config.global_batch_size,
            "config": exp.config.to_dict(), "metrics": metrics or {}}


def train_and_evaluate(config, workdir: str, devices=None, allow_unverified_checkpoint=False,
                       start_fresh_if_no_good_checkpoint=False) -> dict[str, Any]:
    """Train `config` in `workdir` (a local path or gs://...), resuming from its newest good
    checkpoint (see checkpoint.resume_step for the two flags); returns the final eval metrics with
    the step reached, whether the run stopped early on a signal, and whether it is complete. A run
    that is already complete prints its summary and returns at once."""
    session_start = time.perf_counter()
    exp = build_experiment(config, devices)
    plan = plan_run(config, exp.mesh.size)
    is_main = jax.process_index() == 0
    if is_main:
        storage.write_atomic(storage.path(workdir) / "config.json",
                             json.dumps(config.to_dict(), indent=2, default=str))
    checkpointer = Checkpointer(storage.path(workdir) / "checkpoints", config.keep_checkpoints,
                                async_save=config.async_checkpointing)
    start = resume_step(checkpointer, allow_unverified_checkpoint,
                        start_fresh_if_no_good_checkpoint)
    console = Console(exp.total_steps, start or 0)
    console.print(header(plan, workdir, start))
    result: dict[str, Any] = {"step": start or 0, "preempted": False, "complete": False}
    if start is not None and start >= exp.total_steps:
        checkpointer.close()
        console.close()
        console.print(f"{workdir} is complete: nothing to train.\n" + _summary(
            workdir, start, exp, session_start, checkpointer))
        return {**result, "complete": True}
    if start is None:
        state, start = exp.create_train_state(), 0
    else:
        restored = checkpointer.restore(start, exp.abstract_train_state(),
                                        allow_unverified_checkpoint)
        state = restored.state
        if restored.checked != VERIFIED:
            console.print(f"restored step {start} {restored.checked}")

    writer = MetricWriter(workdir, enabled=is_main, tensorboard=config.tensorboard)
    logger = _TrainLogger(exp, writer, console, plan.model.train_flops, checkpointer)
    eval_every = config.eval_every_steps or exp.steps_per_epoch
    feeds = exp.pipeline.train_feed(start)
    arrays = exp.device_data()
    compiled: set[int] = set()
    step, dispatches = start, 0
    try:
        with _StopRequest() as stop:
            while step < exp.total_steps:
                n = _dispatch_length(step, exp.steps_per_dispatch, config, eval_every,
                                     exp.total_steps)
                local = _stack([next(feeds) for _ in range(n)])
                state, metrics = exp.multi_step(
                    state, arrays, parallel.global_batch(local, exp.mesh, steps_axis=True))
                logger.add(step + 1, n, metrics)
                step, dispatches = step + n, dispatches + 1
                if n not in compiled:  # keep compilation out of the throughput window
                    compiled.add(n)
                    logger.check()
                    logger.restart_window()
                preempted = stop.requested(dispatches)
                last = step == exp.total_steps
                if step % config.log_every_steps == 0 or last or preempted:
                    logger.flush(step)
                eval_metrics = None
                if step % eval_every == 0 or last:
                    logger.check()
                    eval_metrics = evaluate(exp, state)
                    writer.write(step, "eval", eval_metrics)
                    result["eval"] = eval_metrics
                    console.print(f"eval at step {step}: loss {eval_metrics['loss']:.4f} top1 "
                                  f"{100 * eval_metrics['top1']:.2f}% top5 "
                                  f"{100 * eval_metrics['top5']:.2f}% over "
                                  f"{int(eval_metrics['count'])} examples")
                at_eval = eval_metrics is not None and config.checkpoint_at_eval
                if step % config.checkpoint_every_steps == 0 or at_eval or last or preempted:
                    logger.check()
                    ckpt_metrics = {f"eval_{k}": v for k, v in (eval_metrics or {}).items()}
                    checkpointer.save(step, state, _meta(exp, step, ckpt_metrics), ckpt_metrics)
                result["step"] = step
                if preempted:
                    result["preempted"] = True
                    console.print(f"Stop requested: saved step {step}; run the same command to "
                                  "resume.")
                    break
    finally:
        console.close()
        writer.close()
        checkpointer.wait()
        checkpointer.close()
    result["complete"] = result["step"] >= exp.total_steps
    console.print(_summary(workdir, result["step"], exp, session_start, checkpointer))
    return result


def _summary(workdir: str, step: int, exp: Experiment, session_start: float,
             checkpointer: Checkpointer) -> str:
    """The final summary of the run in `workdir` (console.final_summary), on process 0."""
    if jax.process_index() != 0:
        return ""
    return final_summary(workdir, step, exp.total_steps, time.perf_counter() - session_start,
                         read_metrics(workdir), str(checkpointer.step_dir(step)))
