"""The loop's periodic actions (actions.py): when each is due, what the checkpoint action saves, and
that the loop runs them in order after checking the step metrics."""

from types import SimpleNamespace

import pytest

from resnet_jax.actions import Action, CheckStop, SaveCheckpoint, Tick


def action(every=None, at_last=False, on_stop=False):
    a = Action()
    a.every, a.at_last, a.on_stop = every, at_last, on_stop
    return a


@pytest.mark.parametrize("tick, every, at_last, on_stop, due", [
    (Tick(20, last=False, dispatches=3), 10, False, False, True),
    (Tick(25, last=False, dispatches=3), 10, False, False, False),
    (Tick(25, last=True, dispatches=3), 10, False, False, False),
    (Tick(25, last=True, dispatches=3), 10, True, False, True),
    (Tick(25, last=False, dispatches=3, stopping=True), 10, True, False, False),
    (Tick(25, last=False, dispatches=3, stopping=True), 10, False, True, True),
    (Tick(25, last=False, dispatches=3), None, False, False, False),
])
def test_an_action_is_due_on_its_period_at_the_end_and_on_a_stop(tick, every, at_last, on_stop,
                                                                  due):
    assert action(every, at_last, on_stop).due(tick) is due


def test_next_due_is_the_next_multiple_of_the_period():
    assert [action(10).next_due(s) for s in (0, 9, 10, 11)] == [10, 10, 20, 20]
    assert action(None).next_due(7) is None


class _Checkpointer:
    def __init__(self):
        self.saved = []

    def save(self, step, state, meta, metrics):
        self.saved.append((step, state, meta, metrics))


def _experiment(checkpoint_every_steps=100, checkpoint_at_eval=False):
    config = SimpleNamespace(checkpoint_every_steps=checkpoint_every_steps,
                             checkpoint_at_eval=checkpoint_at_eval, global_batch_size=8,
                             to_dict=lambda: {"seed": 0})
    return SimpleNamespace(config=config, steps_per_epoch=30)


def test_checkpoint_at_eval_saves_the_eval_metrics_for_keep_best():
    checkpointer = _Checkpointer()
    save = SaveCheckpoint(_experiment(checkpoint_at_eval=True), checkpointer)
    plain = Tick(70, last=False, dispatches=9)
    evaluated = Tick(70, last=False, dispatches=9, eval_metrics={"top1": 0.5, "loss": 1.0})
    assert not save.due(plain) and save.due(evaluated)
    assert not SaveCheckpoint(_experiment(), checkpointer).due(evaluated)
    save(evaluated, "state")
    step, state, meta, metrics = checkpointer.saved[0]
    assert (step, state, metrics) == (70, "state", {"eval_top1": 0.5, "eval_loss": 1.0})
    assert meta == {"step": 70, "epoch": 2, "position_in_epoch": 10, "examples_seen": 560,
                    "config": {"seed": 0}, "metrics": metrics}


def test_check_stop_marks_the_tick_and_runs_after_every_dispatch():
    calls = []
    request = SimpleNamespace(requested=lambda n: calls.append(n) or n == 2)
    check = CheckStop(request)
    ticks = [Tick(s, last=False, dispatches=d) for s, d in ((5, 1), (6, 2))]
    for tick in ticks:
        assert check.due(tick)
        check(tick, None)
    assert calls == [1, 2] and [t.stopping for t in ticks] == [False, True]
    assert not check.reads_state and check.next_due(5) is None
