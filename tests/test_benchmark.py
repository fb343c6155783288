"""The benchmark command: its JSON on a tiny model (as a function and as a CLI), its timing windows,
and the messages of bad arguments. No test asserts a time."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import types

import pytest

from resnet_jax import benchmark, torch_reference
from resnet_jax.errors import UserError
from resnet_jax.models.summary import summarize
from train_cli import MODEL, REPO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_row(row: dict, mode: str, batch: int, devices: int, image_size: int) -> None:
    summary = summarize(MODEL, image_size)
    assert row["mode"] == mode
    assert row["params"] == summary.params
    assert (row["devices"], row["global_batch"]) == (devices, batch)
    assert row["per_device_batch"] == batch // devices
    assert row["flops_per_image"] == (6 if mode == "train" else 2) * summary.macs
    assert row["compile_s"] > 0
    assert row["windows"] >= 1
    assert 0 < row["step_time_min_s"] <= row["step_time_mean_s"] <= row["step_time_max_s"]
    assert row["step_time_std_s"] >= 0
    assert 0 < row["dispatch_time_mean_s"] <= row["step_time_mean_s"]
    assert row["images_per_sec"] > 0 and math.isfinite(row["images_per_sec"])
    assert row["images_per_sec_per_device"] == pytest.approx(row["images_per_sec"] / devices)
    assert row["images_per_sec"] == pytest.approx(batch / row["step_time_mean_s"])
    assert row["mfu"] is None or 0 < row["mfu"] < 1
    assert row["peak_memory_bytes"] > 0
    assert row["peak_memory_kind"] in ("process peak RSS",
                                       "device peak_bytes_in_use (max over devices)")
    assert row["xla_temp_bytes_per_device"] is None or row["xla_temp_bytes_per_device"] >= 0


def test_run_reports_train_and_eval_rows():
    opts = benchmark.Options(model=MODEL, batch_sizes=(8,), image_size=8, steps=2,
                             warmup=1, windows=2)
    report = benchmark.run(opts)
    assert [r["mode"] for r in report["results"]] == ["train", "eval"]
    for row in report["results"]:
        check_row(row, row["mode"], 8, report["machine"]["local_devices"], 8)
    assert report["options"]["num_classes"] == 10
    assert report["machine"]["cpu_count"] >= 1
    json.dumps(report)
    params = summarize(MODEL, 8).params
    assert f"{MODEL} ({params:,} params) at 8x8" in benchmark.format_table(report)


def test_cli_sweeps_batch_sizes_over_two_devices_and_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               PYTHONPATH=ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_jax.benchmark", "--model", MODEL,
         "--batch_size", "4,8", "--image_size", "8", "--steps", "2", "--warmup", "1",
         "--mode", "eval", "--json", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "img/s/dev" in proc.stdout
    report = json.loads(path.read_text())
    assert report["options"]["batch_sizes"] == [4, 8]
    assert report["machine"]["local_devices"] == 2
    for row, batch in zip(report["results"], (4, 8), strict=True):
        check_row(row, "eval", batch, 2, 8)


def test_time_windows_splits_steps_and_waits_once_per_window():
    calls, waits = [], []
    timed = benchmark.time_windows(lambda: calls.append(1) or len(calls), steps=7, windows=3,
                                   wait=waits.append)
    assert [w.steps for w in timed] == [3, 2, 2]
    assert waits == [[1, 2, 3], [4, 5], [6, 7]]
    assert all(0 <= w.dispatch_seconds <= w.seconds for w in timed)
    assert [w.steps for w in benchmark.time_windows(lambda: 0, steps=2, windows=5)] == [1, 1]
    calls.clear()
    timed = benchmark.time_windows(lambda: calls.append(1), steps=6, windows=5, wait=len,
                                   steps_per_call=2)
    assert len(calls) == 3 and [w.steps for w in timed] == [2, 2, 2]


def test_steps_per_dispatch_times_whole_dispatches_of_multi_step():
    opts = benchmark.Options(model=MODEL, batch_sizes=(4,), image_size=8, steps=4,
                             warmup=1, windows=3, mode="train", steps_per_dispatch=2)
    report = benchmark.run(opts)
    (row,) = report["results"]
    check_row(row, "train", 4, report["machine"]["local_devices"], 8)
    assert row["windows"] == 2  # 4 steps = 2 dispatches, at most one window each
    assert "train 2 per dispatch" in benchmark.format_table(report)


def test_remat_off_and_on_run_side_by_side_with_micro_batches():
    opts = benchmark.Options(model=MODEL, batch_sizes=(4,), image_size=8, steps=2,
                             warmup=0, windows=2, mode="train", remat=(False, True),
                             accumulation_steps=2)
    report = benchmark.run(opts)
    assert [row["remat"] for row in report["results"]] == [False, True]
    for row in report["results"]:
        check_row(row, "train", 4, report["machine"]["local_devices"], 8)
    table = benchmark.format_table(report)
    assert "2 micro-batches per step" in table
    assert [line.split()[3] for line in table.splitlines()[2:]] == ["off", "on"]
    config = benchmark.experiment_config(benchmark.resolved(opts), 4, remat=True)
    assert (config.model.remat, config.accumulation_steps) == (True, 2)


def test_the_benchmark_config_is_synthetic_data_on_the_devices():
    opts = benchmark.resolved(benchmark.Options(model="resnet18", steps_per_dispatch=5))
    c = benchmark.experiment_config(opts, 16)
    assert (c.data.dataset, c.data.placement, c.data.image_size, c.data.num_classes) == (
        "synthetic", "device", 224, 1000)
    assert (c.global_batch_size, c.data.num_train_examples, c.steps_per_dispatch) == (16, 16, 5)


@pytest.mark.parametrize("changes, devices, message", [
    ({"model": "resnet51"}, 1, "--model: unknown model 'resnet51'"),
    ({"batch_sizes": (6,)}, 4, "--batch_size=6: config.global_batch_size=6 is not divisible by "
                               "the 4 devices"),
    ({"batch_sizes": (8, 12)}, 8, "--batch_size=12: config.global_batch_size=12 is not divisible"),
    ({"batch_sizes": (0,)}, 1, "--batch_size=0: config.global_batch_size=0 is not allowed"),
    ({"devices": 2}, 1, "--devices 2 asks for more than the 1 local device(s)"),
    ({"batch_sizes": (16,), "bn_group_size": 3}, 2,
     "--bn_group_size=3: config.model.bn_group_size=3 must divide the per-device batch 8"),
    ({"batch_sizes": (8,), "accumulation_steps": 3}, 2,
     "--accumulation_steps=3: config.accumulation_steps=3 must divide the per-device batch 4"),
    ({"remat": ()}, 1, "--remat needs at least one of false, true"),
    ({"dtype": "float16"}, 1, "--dtype=float16: config.model: model option dtype='float16' is "
                              "not allowed"),
    ({"image_size": 0}, 1, "--image_size=0: config.data.image_size=0 must be positive"),
    ({"num_classes": 0}, 1, "--num_classes=0: config.data.num_classes=0 must be positive"),
    ({"seed": -1}, 1, "--seed=-1: config.seed=-1 is not allowed"),
    ({"mode": "infer"}, 1, "--mode 'infer' is not allowed"),
    ({"steps": 0}, 1, "--steps 0 is not allowed"),
    ({"warmup": -1}, 1, "--warmup -1 is not allowed"),
    ({"steps_per_dispatch": 0}, 1, "--steps_per_dispatch 0 is not allowed"),
    ({"steps": 10, "steps_per_dispatch": 4}, 1,
     "--steps 10 is not a multiple of --steps_per_dispatch 4"),
])
def test_bad_arguments_are_named(changes, devices, message):
    fields = {"model": "cifar_resnet20", "batch_sizes": (8,), **changes}
    with pytest.raises(ValueError) as e:
        benchmark.validate(benchmark.Options(**fields), available_devices=devices)
    assert message in str(e.value)


@pytest.mark.parametrize("module, args, message", [
    ("resnet_jax.benchmark", ["--model=resnet51", "--batch_size=8"], "--model: unknown model 'resnet51'"),
    ("resnet_jax.benchmark", ["--model=resnet50", "--batch_size=8,x"], "--batch_size=8,x: expected ints"),
    ("resnet_jax.benchmark", ["--batch_size=8"], "--model"),
    ("resnet_jax.models.summary", ["--model=resnet51"], "--model=resnet51: unknown model"),
    ("resnet_jax.data.prepare", ["--dataset=tfds"], "--dataset=tfds needs --tfds_name"),
    ("resnet_jax.data.prepare", ["--dataset=mnist"], "--dataset"),
])
def test_commands_report_a_bad_flag_in_one_line_before_compute(module, args, message):
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith(f"python -m {module}: error: ") and message in lines[0], lines


def test_torch_reference_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        torch_reference.validate(benchmark.Options(model="cifar_resnet20"))
    with pytest.raises(ValueError, match="one GPU"):
        torch_reference.validate(benchmark.Options(model="resnet50", devices=2))
    with pytest.raises(ValueError, match="--steps_per_dispatch"):
        torch_reference.validate(benchmark.Options(model="resnet50", steps_per_dispatch=2))
    with pytest.raises(ValueError, match="--remat"):
        torch_reference.validate(benchmark.Options(model="resnet50", remat=(True,)))


def _torch_sees_a_gpu() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_torch_sees_a_gpu(), reason="with a GPU the command would run the benchmark")
def test_torch_reference_without_a_gpu_stops_with_one_line():
    proc = subprocess.run(
        [sys.executable, "-m", "resnet_jax.torch_reference", "--model", "resnet18",
         "--batch_size", "2", "--image_size", "32", "--steps", "1"],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    prefix = "python -m resnet_jax.torch_reference: error: the PyTorch reference needs "
    if importlib.util.find_spec("torch") is None:
        assert lines[0].startswith(prefix + "torch and torchvision"), lines
    else:
        assert lines[0].startswith(prefix + "a CUDA GPU; torch "), lines


def test_torch_reference_without_torch_names_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(UserError, match="^the PyTorch reference needs torch and torchvision"):
        torch_reference.require_cuda()


def test_torch_reference_compiles_each_batch_size_as_its_own_static_graph():
    torch = pytest.importorskip("torch")
    graphs = []

    def record(graph_module, example_inputs):
        graphs.append([tuple(x.shape) if isinstance(x, torch.Tensor) else x
                       for x in example_inputs])
        return graph_module.forward

    sizes = range(2, 12)  # more sizes than dynamo's recompile limit (8)
    for size in sizes:
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        torch_reference.compile_static(model, backend=record)(torch.randn(size, 3, 8, 8))
    # One graph per size, every input a tensor of concrete ints: no symbolic batch dimension.
    assert len(graphs) == len(sizes)
    assert all(isinstance(x, tuple) and all(type(d) is int for d in x) for g in graphs for x in g)
    assert [g[-1] for g in graphs] == [(size, 3, 8, 8) for size in sizes]


def test_torch_reference_json_names_the_cpu_beside_the_gpu():
    cpuinfo = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    found = re.search(r"^model name\s*:\s*(.+?)\s*$", cpuinfo, re.MULTILINE)
    if found is None:
        pytest.skip("no /proc/cpuinfo naming the CPU model here")
    fake_torch = types.SimpleNamespace(
        __version__="0.0", cuda=types.SimpleNamespace(get_device_name=lambda: "NVIDIA X100"))
    machine = torch_reference._machine(fake_torch)
    assert machine["cpu"] == found[1] == benchmark.cpu_model()
    assert machine["device_kind"] == "NVIDIA X100"


def test_max_batch_returns_a_batch_that_fits_and_the_next_that_does_not():
    import jax

    from resnet_jax.compiled_memory import planned_train_step_memory
    from resnet_jax.plan import plan_run

    opts = benchmark.resolved(benchmark.Options(model=MODEL, image_size=8))
    devices = jax.local_devices()[:1]

    def measured(batch: int) -> int:  # compiled here, independently of the search
        config = benchmark.experiment_config(opts, batch)
        config.data.placement = "host"
        return planned_train_step_memory(config, plan_run(config, 1), devices).total_bytes

    step = benchmark.MAX_BATCH_STEP
    fitting, too_large = measured(step), measured(2 * step)
    assert fitting < too_large
    result = benchmark.max_batch(opts, (fitting + too_large) // 2, devices)
    assert (result["per_device_batch"], result["first_not_fitting"]) == (step, 2 * step)
    assert result["compiled_bytes"] == {str(step): fitting, str(2 * step): too_large}


def test_max_batch_bisects_between_the_last_fitting_double_and_the_first_too_large(monkeypatch):
    sizes = []

    def fake_memory(opts, batch, devices):
        sizes.append(batch)
        return types.SimpleNamespace(total_bytes=1000 * batch)

    monkeypatch.setattr(benchmark, "train_step_memory", fake_memory)
    monkeypatch.setattr(benchmark, "machine", dict)
    opts = benchmark.resolved(benchmark.Options(model="cifar_resnet20"))
    result = benchmark.max_batch(opts, 44_999, devices=[None])
    assert sizes == [8, 16, 32, 64, 48, 40]
    assert (result["per_device_batch"], result["first_not_fitting"]) == (40, 48)
    assert benchmark.max_batch(opts, 7_999, devices=[None])["per_device_batch"] is None
