"""Datasets held on the devices (data/on_device.py) and several train steps per dispatch: the
augmentation's statistics and windows, the order and coverage of the feeds, where the examples are
placed, and k steps in one dispatch against k dispatches of one step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import resnet_jax.data as data_lib
from resnet_jax import parallel
from resnet_jax.config import base_config, validate_config
from resnet_jax.data import HostSlice, build_pipeline
from resnet_jax.data.base import ArrayPipeline, stack_feeds
from resnet_jax.data.on_device import Augmentation, DevicePipeline, augment, crop_offsets_and_flips
from resnet_jax.errors import ConfigError
from resnet_jax.experiment import build_experiment
from resnet_jax.actions import Action, dispatch_length
from train_cli import MODEL


def digits_config(**data):
    c = base_config()
    c.model.name = MODEL
    c.global_batch_size, c.eval_batch_size = 32, 40
    c.data.update(data)
    return c


def pipeline_of(c, hosts=None) -> data_lib.Pipeline:
    validate_config(c)
    return build_pipeline(c.data, hosts or HostSlice(c.global_batch_size, c.eval_batch_size),
                          c.seed)


def test_crop_offsets_and_flips_are_uniform_and_fixed_by_the_key():
    n, pad = 90_000, 4
    key = jax.random.key(3)
    offsets, flips = map(np.asarray, crop_offsets_and_flips(key, n, Augmentation(pad, True)))
    expected = n / (2 * pad + 1) ** 2
    cells = np.bincount(offsets[:, 0] * (2 * pad + 1) + offsets[:, 1], minlength=81)
    # Each of the 81 joint offsets within 5 standard deviations of its binomial expectation.
    assert cells.shape == (81,) and np.all(np.abs(cells - expected) < 5 * np.sqrt(expected))
    assert abs(flips.mean() - 0.5) < 5 * np.sqrt(0.25 / n)
    # Offsets and flips independent: the flip rate within each row offset is still one half.
    for dy in range(2 * pad + 1):
        rows = flips[offsets[:, 0] == dy]
        assert abs(rows.mean() - 0.5) < 5 * np.sqrt(0.25 / len(rows))
    again = crop_offsets_and_flips(key, n, Augmentation(pad, True))
    assert np.array_equal(offsets, again[0]) and np.array_equal(flips, again[1])
    other = np.asarray(crop_offsets_and_flips(jax.random.key(4), n, Augmentation(pad, True))[0])
    assert not np.array_equal(offsets, other)
    _, no_flips = crop_offsets_and_flips(key, n, Augmentation(pad, False))
    assert not np.asarray(no_flips).any()


def test_augment_takes_the_drawn_window_of_the_zero_padded_image():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((64, 6, 5, 2)).astype(np.float32)
    key, aug = jax.random.key(11), Augmentation(pad=2, flip=True)
    out = np.asarray(augment(jnp.asarray(images), key, aug))
    offsets, flips = map(np.asarray, crop_offsets_and_flips(key, 64, aug))
    for image, got, (dy, dx), flip in zip(images, out, offsets, flips):
        padded = np.zeros((10, 9, 2), np.float32)
        padded[2:8, 2:7] = image
        window = padded[dy:dy + 6, dx:dx + 5]
        assert np.array_equal(got, window[:, ::-1] if flip else window)
    assert flips.any() and not flips.all() and len({tuple(o) for o in offsets}) > 10


def test_train_feed_is_the_host_order_and_covers_each_epoch_once():
    c = digits_config()
    device, host = pipeline_of(c), pipeline_of(digits_config(placement="host"))
    assert isinstance(device, DevicePipeline) and isinstance(host, ArrayPipeline)
    steps = device.steps_per_epoch
    feed = device.train_feed(0)
    for epoch in range(2):
        seen = np.concatenate([next(feed)["index"] for _ in range(steps)])
        assert len(np.unique(seen)) == steps * c.global_batch_size  # no example twice in an epoch
        for step in (epoch * steps, epoch * steps + steps - 1):
            assert np.array_equal(device.global_indices(step), host.global_indices(step))
    resumed = next(device.train_feed(steps + 3))["index"]
    assert np.array_equal(resumed, device.global_indices(steps + 3))


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_eval_feed_counts_every_example_once_across_processes(processes):
    c = digits_config()  # 360 eval examples in batches of 40: the last one is full
    c.eval_batch_size = 48  # ... and here it is not (360 = 7 * 48 + 24)
    counts = np.zeros(360, int)
    batches = set()
    for p in range(processes):
        hosts = HostSlice(c.global_batch_size, c.eval_batch_size, p, processes)
        feeds = list(pipeline_of(c, hosts).eval_feed())
        batches.add(len(feeds))
        for f in feeds:
            assert len(f["index"]) == 48 // processes
            np.add.at(counts, f["index"][f["mask"]], 1)
    assert batches == {8} and np.all(counts == 1)


def test_device_eval_batches_equal_the_host_pipelines():
    device = pipeline_of(digits_config())
    host = pipeline_of(digits_config(placement="host"))
    for d, h in zip(device.eval_batches(), host.eval_batches(), strict=True):
        assert np.array_equal(d["label"][d["mask"]], h["label"][h["mask"]])
        np.testing.assert_allclose(d["image"][d["mask"]], h["image"][h["mask"]], atol=2e-6)


def test_placement_auto_device_host_and_the_budget(monkeypatch):
    assert isinstance(pipeline_of(digits_config()), DevicePipeline)
    assert isinstance(pipeline_of(digits_config(placement="host")), ArrayPipeline)
    assert isinstance(pipeline_of(digits_config(dataset="synthetic")), DevicePipeline)
    monkeypatch.setattr(data_lib, "DEVICE_BUDGET_BYTES", 1437 * 65)  # digits need 1797 * 68
    assert isinstance(pipeline_of(digits_config()), ArrayPipeline)
    assert isinstance(pipeline_of(digits_config(placement="device")), DevicePipeline)
    c = digits_config(dataset="cifar10", placement="device", eval_crop="ten_crop")
    with pytest.raises(ConfigError, match=r"^config.data.placement='device' is not possible: "
                                          r"eval_crop 'ten_crop' \(on the devices: 'center'\)"):
        validate_config(c, require_data=False)
    c = digits_config(dataset="cifar10", placement="auto", train_augment="inception")
    assert "train_augment 'inception'" in data_lib.device_unsupported(c.data)
    c = digits_config(placement="gpu")
    with pytest.raises(ConfigError, match=r"placement='gpu' is not allowed; expected one of "
                                          r"\['auto', 'device', 'host'\]"):
        validate_config(c)


def test_k_steps_in_one_dispatch_equal_k_dispatches_of_one_step():
    """Dispatches of 8 and 4 steps give the same bits: the loop body is one compiled step. A
    lone step (n = 1, no loop) is compiled apart from the loop body, so XLA may round differently
    in the last bits (its first loss has differed from the scan's in the 8th digit): at a small
    learning rate (no chaotic amplification) the losses agree within 1e-4 and the parameters and
    BatchNorm statistics stay within 1e-5 of their norm."""
    c = digits_config()
    c.steps_per_dispatch = 4
    c.schedule.base_lr = 1e-3
    exp = build_experiment(c, jax.devices()[:1])
    assert exp.steps_per_dispatch == 4
    arrays = exp.device_data()

    def run(lengths):
        """(params and BatchNorm statistics, optimizer state, losses) after `lengths` dispatches."""
        state, feeds, losses = exp.create_train_state(), exp.pipeline.train_feed(0), []
        for n in lengths:
            local = stack_feeds([next(feeds) for _ in range(n)])
            state, m = exp.multi_step(state, arrays, parallel.global_batch(local, exp.mesh, True))
            losses.extend(jax.device_get(m["loss"]))
        assert int(state.step) == sum(lengths)
        state = jax.device_get(state)
        return (jax.tree.leaves((state.params, state.batch_stats)),
                jax.tree.leaves(state.opt_state), losses)

    eight, fours = run([8]), run([4, 4])
    for a, b in zip(*(x[0] + x[1] for x in (eight, fours))):
        np.testing.assert_array_equal(a, b)
    singles = run([1] * 8)
    np.testing.assert_allclose(singles[2], eight[2], rtol=1e-4)
    a, b = (np.concatenate([x.ravel() for x in run_[0]]) for run_ in (eight, singles))
    assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a)


def periodic(every):
    action = Action()
    action.every = every
    return action


def test_dispatches_end_on_every_step_an_action_is_due():
    actions = [Action(), periodic(50), periodic(70), periodic(120)]  # Action(): every dispatch
    total, k = 1000, 16
    step, ends, lengths = 0, [], set()
    while step < total:
        n = dispatch_length(step, k, actions, total)
        lengths.add(n)
        step += n
        ends.append(step)
    boundaries = sorted({s for s in range(1, total + 1)
                         if s % 50 == 0 or s % 70 == 0 or s % 120 == 0 or s == total})
    assert set(boundaries) <= set(ends) and step == total and lengths == {1, k}
    # Between two boundaries: as many full dispatches as fit, then single steps.
    gaps = np.diff([0] + boundaries)
    assert len(ends) == sum(g // k + g % k for g in gaps)


def test_loop_benchmark_variants_parse_and_bad_ones_name_the_flag():
    from resnet_jax.errors import FlagError
    from resnet_jax.loop_benchmark import Variant, parse_variants

    assert parse_variants("host:1, device:8") == [Variant("host", 1), Variant("device", 8)]
    for bad in ("gpu:1", "device:0", "device", "host:x"):
        with pytest.raises(FlagError, match=rf"^--variants='{bad}': '{bad}' is not "
                                            r"placement:steps_per_dispatch"):
            parse_variants(bad)
