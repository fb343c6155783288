"""The training loop's periodic work, each piece declared once as an action with its period.

After every dispatch the loop makes a `Tick` (the step reached, whether it is the last one, whether
a stop was requested) and runs, in list order, every action due at it. `dispatch_length` reads the
same periods, so each step at which an action is due ends a dispatch: one declaration decides both
when the loop stops dispatching and what it does there. A new periodic feature is one more action.

Actions that read the train state (log, eval, checkpoint) run only after the pending step metrics
were checked for divergence, so a diverged state is never evaluated or saved.
"""

import contextlib
import dataclasses
import shutil
import signal
import tempfile
import threading
import time
from typing import Iterator, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils

from resnet_jax import storage
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.console import Console, format_duration
from resnet_jax.divergence import divergence_error
from resnet_jax.evaluation import evaluate
from resnet_jax.experiment import Experiment
from resnet_jax.metric_writers import MetricWriter
from resnet_jax.phase_clock import PhaseClock
from resnet_jax.steps import ema_weights, has_ema

PROFILE_DIR = "profile"  # <workdir>/profile: TensorBoard's profile plugin finds it as run "profile"


@dataclasses.dataclass
class Tick:
    """The loop at the end of a dispatch, as the actions see it (and mark it)."""

    step: int  # train steps done
    last: bool  # step is the run's final step
    dispatches: int  # dispatches done in this session (1, 2, ...)
    stopping: bool = False  # a stop was requested: save, then return (set by CheckStop)
    eval_metrics: Optional[dict] = None  # set by Evaluate when it ran at this step


class Action:
    """Work the loop does at some ticks.

    `every`: the period in steps (due at its multiples), or None for an action that looks at every
    dispatch without shortening any; `at_last` / `on_stop`: also due at the final step / when a
    stop was requested; `reads_state`: needs the step metrics checked for divergence first;
    `phase`: the phase_clock phase its time counts as (None: "other").
    """

    every: Optional[int] = None
    at_last: bool = False
    on_stop: bool = False
    reads_state: bool = True
    phase: Optional[str] = None

    def due(self, tick: Tick) -> bool:
        return ((self.every is not None and tick.step % self.every == 0)
                or (self.at_last and tick.last) or (self.on_stop and tick.stopping))

    def next_due(self, step: int) -> Optional[int]:
        """The first step after `step` at which the period makes this action due (None: none)."""
        return None if self.every is None else (step // self.every + 1) * self.every

    def __call__(self, tick: Tick, state) -> None:
        raise NotImplementedError


def dispatch_length(step: int, steps_per_dispatch: int, actions: list[Action],
                    total_steps: int) -> int:
    """Steps the dispatch after `step` runs: `steps_per_dispatch` when no action falls due (and the
    run does not end) before that many steps, else 1, so that every such step ends a dispatch with
    at most two compiled lengths."""
    due = [a.next_due(step) for a in actions]
    nearest = min([d for d in due if d is not None] + [total_steps])
    return steps_per_dispatch if nearest - step >= steps_per_dispatch else 1


class StopRequest:
    """Set by SIGTERM (preemption) or the first Ctrl-C, as a context manager over the loop.

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


class CheckStop(Action):
    """After every dispatch: marks the tick `stopping` when a stop was requested (first in the
    list, so that the log and the checkpoint see it)."""

    reads_state = False

    def __init__(self, request: StopRequest):
        self.request = request

    def due(self, tick: Tick) -> bool:
        return True

    def __call__(self, tick: Tick, state) -> None:
        tick.stopping = self.request.requested(tick.dispatches)


class TrainLog(Action):
    """Holds the device metrics of dispatched steps; every `every` steps (and at the last step, and
    on a stop) fetches, checks, averages and writes them, with throughput, MFU and the window's
    wall time split by phase (time_<phase> seconds, phase_clock.py)."""

    at_last = on_stop = True

    def __init__(self, exp: Experiment, writer: MetricWriter, console: Console,
                 checkpointer: Checkpointer, clock: PhaseClock):
        self.every = exp.config.log_every_steps
        self.exp, self.writer, self.console = exp, writer, console
        self.checkpointer, self.clock = checkpointer, clock
        self.pending: list[tuple[int, dict]] = []  # (first step, metrics stacked [n]) per dispatch
        self.restart_window()
        self.flops = exp.plan.model.train_flops
        self.peak = exp.plan.peak_flops

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

    def restart_window(self) -> None:
        """Start a throughput window (after a compilation, so that it is not counted)."""
        self.window_start, self.window_steps = time.perf_counter(), 0

    def __call__(self, tick: Tick, state) -> None:
        if not self.pending:
            return
        exp, step, devices = self.exp, tick.step, self.exp.mesh.size
        mean = {k: float(np.mean(np.concatenate([m[k] for _, m in self.pending])))
                for k in self.pending[0][1] if k != "finite"}
        mean["lr"] = float(self.pending[-1][1]["lr"][-1])
        mean["epoch"] = step / exp.steps_per_epoch
        speed = ""
        if self.window_steps:  # empty right after the compile step
            step_time = (time.perf_counter() - self.window_start) / self.window_steps
            images = exp.config.global_batch_size / step_time
            mean.update(step_time=step_time, images_per_sec=images,
                        images_per_sec_per_device=images / devices)
            if self.peak:
                mean["mfu"] = images * self.flops / (self.peak * devices)
            eta = (exp.total_steps - step) * step_time
            speed = (f" | {images:,.0f} img/s ({images / devices:,.0f}/device) "
                     f"{1000 * step_time:.1f} ms/step | ETA {format_duration(eta)}")
        mean.update({f"time_{k}": v for k, v in self.clock.window_split().items()})
        self.writer.write(step, "train", mean)
        self.console.print(f"step {step:>7}/{exp.total_steps} epoch {mean['epoch']:6.2f} | "
                           f"loss {mean['loss']:.4f} top1 {100 * mean['top1']:6.2f}% "
                           f"lr {mean['lr']:.4g}{speed}")
        self.pending = []
        self.restart_window()


class Evaluate(Action):
    """Every `every` steps (config.eval_every_steps, default one epoch) and at the last step: the
    whole eval split, written and printed; the tick carries the metrics to the checkpoint. A state
    with an EMA (config.ema_decay) is evaluated twice: its raw weights, and its EMA weights as
    ema_loss, ema_top1 and ema_top5."""

    at_last = True
    phase = "eval"

    def __init__(self, exp: Experiment, writer: MetricWriter, console: Console):
        self.every = exp.plan.eval_every_steps
        self.exp, self.writer, self.console = exp, writer, console
        self.latest: Optional[dict] = None

    def __call__(self, tick: Tick, state) -> None:
        metrics = evaluate(self.exp, state)
        line = (f"eval at step {tick.step}: loss {metrics['loss']:.4f} top1 "
                f"{100 * metrics['top1']:.2f}% top5 {100 * metrics['top5']:.2f}% over "
                f"{int(metrics['count'])} examples")
        if has_ema(state):
            ema = evaluate(self.exp, ema_weights(state))
            metrics.update({f"ema_{k}": ema[k] for k in ("loss", "top1", "top5")})
            line += (f"; EMA loss {ema['loss']:.4f} top1 {100 * ema['top1']:.2f}% top5 "
                     f"{100 * ema['top5']:.2f}%")
        self.writer.write(tick.step, "eval", metrics)
        self.console.print(line)
        tick.eval_metrics = self.latest = metrics


class SaveCheckpoint(Action):
    """Every config.checkpoint_every_steps, at the last step, on a stop, and with
    config.checkpoint_at_eval at every eval step (the eval metrics go with it, for keep-best)."""

    at_last = on_stop = True
    phase = "checkpoint"

    def __init__(self, exp: Experiment, checkpointer: Checkpointer):
        self.every = exp.config.checkpoint_every_steps
        self.at_eval = exp.config.checkpoint_at_eval
        self.exp, self.checkpointer = exp, checkpointer

    def due(self, tick: Tick) -> bool:
        return super().due(tick) or (self.at_eval and tick.eval_metrics is not None)

    def __call__(self, tick: Tick, state) -> None:
        metrics = {f"eval_{k}": v for k, v in (tick.eval_metrics or {}).items()}
        self.checkpointer.save(tick.step, state, self.meta(tick.step, metrics), metrics)

    def meta(self, step: int, metrics: dict) -> dict:
        """What the checkpoint's meta holds besides the state: data position, config, metrics."""
        exp = self.exp
        return {"step": step, "epoch": step // exp.steps_per_epoch,
                "position_in_epoch": step % exp.steps_per_epoch,
                "examples_seen": step * exp.config.global_batch_size,
                "config": exp.config.to_dict(), "metrics": metrics}


class Profile(Action):
    """config.profile_steps = (a, b), on process 0 only: a jax.profiler trace of the dispatches that
    run any of the train steps a .. b-1 (0-based, as state.step counts them), each traced whole
    with its input, as one "train" step annotation per dispatch (StepTraceAnnotation, step_num: its
    first step; one step per dispatch gives one annotation per step). It never shortens a
    dispatch, so the steps traced run as they do untraced.

    The trace starts in `dispatch`, before the first such dispatch, and stops at the first tick at
    or past step b (at the last step, on a stop request, or on `close`) after the loop has waited
    for the devices to finish. jax.profiler writes it into a local folder (its Perfetto export
    reads local files only), then copied to <workdir>/profile/plugins/profile/<time>/:
    <host>.xplane.pb (TensorBoard's profile plugin, XProf), <host>.trace.json.gz and
    perfetto_trace.json.gz (ui.perfetto.dev). Starting and writing count as the profile phase.
    """

    reads_state = True  # the loop fetches the step metrics, so the traced steps are done
    phase = "profile"

    def __init__(self, steps: tuple[int, int], workdir: storage.PathLike, clock: PhaseClock):
        self.first, self.end = steps
        self.target = storage.path(workdir) / PROFILE_DIR
        self.clock = clock
        self.tracing_into: Optional[str] = None  # the local folder of the trace in progress

    @contextlib.contextmanager
    def dispatch(self, first_step: int, steps: int) -> Iterator[None]:
        """Around a dispatch of steps first_step .. first_step + steps - 1 and its input: starts
        the trace if the dispatch holds one of the steps and none was started, and annotates
        the dispatch while tracing."""
        if self.tracing_into is None and first_step < self.end and first_step + steps > self.first:
            with self.clock.phase("profile"):
                self.tracing_into = tempfile.mkdtemp(prefix="resnet-jax-profile-")
                jax.profiler.start_trace(self.tracing_into, create_perfetto_trace=True)
        if self.tracing_into is None:
            yield
            return
        with jax.profiler.StepTraceAnnotation("train", step_num=first_step):
            yield

    def due(self, tick: Tick) -> bool:
        return self.tracing_into is not None and (tick.step >= self.end or tick.last
                                                  or tick.stopping)

    def __call__(self, tick: Tick, state) -> None:
        self.close()

    def close(self) -> None:
        """Stop the trace in progress, if any, and copy it into the workdir. Raises StorageError
        naming a file that cannot be copied."""
        if self.tracing_into is None:
            return
        local, self.tracing_into = self.tracing_into, None
        try:
            jax.profiler.stop_trace()
            storage.copy_folder(local, self.target)
        finally:
            shutil.rmtree(local, ignore_errors=True)
