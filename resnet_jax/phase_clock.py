"""Where a training session's wall time goes: compilation, waiting for input, device steps,
evaluation, checkpointing, profiling (starting and writing a config.profile_steps trace), and the
rest.

The loop runs each piece of work inside `clock.phase(name)`; "other" is the wall time no phase
claimed (building the run, logging, the stop check), so the phases add up to the wall time by
construction and a phase that is timed twice shows as a negative "other". Dispatches are
asynchronous: a step's device time is paid where the host waits for its results (the metrics
check before an action, or a log), which the loop times as "steps".
"""

import contextlib
import time
from typing import Iterator, Optional

PHASES = ("compile", "input_wait", "steps", "eval", "checkpoint", "profile")


class PhaseClock:
    """Seconds per phase since `start` (a time.perf_counter() value; default now), for the whole
    session and for the current window (since the last `window_split`)."""

    def __init__(self, start: Optional[float] = None):
        self.start = self.window_start = time.perf_counter() if start is None else start
        self.total = dict.fromkeys(PHASES, 0.0)
        self.window = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: Optional[str]) -> Iterator[None]:
        """Time the block as `name` (one of PHASES; None: not claimed, so it counts as other)."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            if name is not None:
                seconds = time.perf_counter() - begun
                self.total[name] += seconds
                self.window[name] += seconds

    @staticmethod
    def _split(seconds: dict, wall: float) -> dict[str, float]:
        return {**seconds, "other": wall - sum(seconds.values()), "wall": wall}

    def split(self) -> dict[str, float]:
        """{phase: seconds, "other": unclaimed seconds, "wall": seconds since start}."""
        return self._split(self.total, time.perf_counter() - self.start)

    def window_split(self) -> dict[str, float]:
        """split() of the window since the previous call (or the start); starts a new window."""
        now = time.perf_counter()
        out = self._split(self.window, now - self.window_start)
        self.window, self.window_start = dict.fromkeys(PHASES, 0.0), now
        return out


def describe(split: dict[str, float]) -> str:
    """'time: compile 4.1 s, input wait 0.3 s (1 %), steps 18.2 s, ...' of a split(); the profile
    phase only when a trace took time."""
    wall = split["wall"] or 1.0
    parts = [f"{name.replace('_', ' ')} {split[name]:.1f} s ({100 * split[name] / wall:.0f} %)"
             for name in (*PHASES, "other") if name != "profile" or split[name]]
    return f"time: {', '.join(parts)} of {split['wall']:.1f} s"
