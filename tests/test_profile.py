"""config.profile_steps: a jax.profiler trace of the chosen steps only, annotated per dispatch,
written into the workdir; whole dispatches traced; the field's validation."""

import contextlib
import gzip
import json

import jax
import pytest

from resnet_jax.actions import Profile, Tick
from resnet_jax.config import base_config, validate_config
from resnet_jax.errors import ConfigError
from resnet_jax.phase_clock import PhaseClock
from resnet_jax.training import train_and_evaluate
from train_cli import SHORT_SCHEDULE, tiny_config


def test_a_trace_of_steps_2_and_3_is_written_into_the_workdir(tmp_path):
    config = tiny_config({"schedule.length": 6, **SHORT_SCHEDULE})
    config.log_every_steps = config.eval_every_steps = config.checkpoint_every_steps = 6
    config.steps_per_dispatch, config.profile_steps = 1, (2, 4)
    result = train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    (session,) = (tmp_path / "profile" / "plugins" / "profile").iterdir()
    assert list(session.glob("*.xplane.pb")) and (session / "perfetto_trace.json.gz").is_file()
    (trace_file,) = session.glob("*.trace.json.gz")
    events = json.loads(gzip.decompress(trace_file.read_bytes()))["traceEvents"]
    annotated = [int(e["args"]["step_num"]) for e in events if e.get("name") == "train"]
    assert annotated == [2, 3]
    assert result["time"]["profile"] > 0


class _Profiler:
    """Stands in for jax.profiler's start_trace, stop_trace and StepTraceAnnotation: records the
    trace's start, annotations and stop."""

    def __init__(self, monkeypatch):
        self.calls = []
        monkeypatch.setattr(jax.profiler, "start_trace",
                            lambda log_dir, **options: self.calls.append("start"))
        monkeypatch.setattr(jax.profiler, "stop_trace", lambda: self.calls.append("stop"))
        monkeypatch.setattr(jax.profiler, "StepTraceAnnotation", self.annotation)

    def annotation(self, name, step_num):
        self.calls.append(f"{name} {step_num}")
        return contextlib.nullcontext()


@pytest.mark.parametrize("start, dispatches, calls", [
    # Dispatches of 2 steps: those holding steps 3 and 4 are traced whole, from step 2 to 5.
    (0, [2, 2, 2, 2], ["train 2", "train 4", "stop"]),
    # Resumed at step 4: the rest of the range.
    (4, [1, 1, 1], ["train 4", "stop"]),
    # Resumed past the range: nothing.
    (5, [1, 1], []),
])
def test_dispatches_holding_a_chosen_step_are_traced_whole(tmp_path, monkeypatch, start,
                                                          dispatches, calls):
    profiler = _Profiler(monkeypatch)
    profile = Profile((3, 5), tmp_path, PhaseClock())
    step = start
    for n in dispatches:
        with profile.dispatch(step, n):
            pass
        step += n
        tick = Tick(step, last=False, dispatches=1)
        if profile.due(tick):
            profile(tick, None)
    assert profiler.calls == (["start"] if calls else []) + calls
    assert profile.next_due(0) is None  # never shortens a dispatch


def test_a_stop_request_ends_the_trace(tmp_path, monkeypatch):
    profiler = _Profiler(monkeypatch)
    profile = Profile((0, 100), tmp_path, PhaseClock())
    with profile.dispatch(0, 1):
        pass
    assert not profile.due(Tick(1, last=False, dispatches=1))
    assert profile.due(Tick(1, last=False, dispatches=1, stopping=True))
    assert profile.due(Tick(1, last=True, dispatches=1))


@pytest.mark.parametrize("value", [(4, 2), (2, 2), (-1, 3), (1,), (1, 2, 3), (1.0, 2)])
def test_bad_profile_steps_are_rejected_naming_the_field(value):
    config = base_config()
    config.profile_steps = value
    with pytest.raises(ConfigError, match=r"profile_steps=.* is not allowed; expected a pair"):
        validate_config(config)
