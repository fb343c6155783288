"""Train- and eval-step throughput of a registered model, on synthetic data held by the devices.

    python -m resnet_jax.benchmark --model resnet50 --batch_size 256 --image_size 224 \
        --dtype bfloat16 --steps 50 --warmup 5 [--steps_per_dispatch 10] --json bench.json
    python -m resnet_jax.benchmark --model resnet50 --dtype bfloat16 --max_batch --memory_gib 80

With --max_batch nothing runs: the largest per-device batch (a multiple of MAX_BATCH_STEP) whose
train step, compiled for --devices on a host feed, fits --memory_gib GiB per device in XLA's
memory analysis (compiled_memory; doubling, then bisection), and the first size that does not.

The functions measured are those training and evaluation dispatch: `experiment.build_experiment`
builds them from a config whose only changes from `base_config()` are the model, batch, image size,
dtype, BatchNorm grouping, rematerialisation, micro-batches per step and steps per dispatch given
here, on the synthetic dataset held on the
devices (config.data.placement "device"; one batch of examples in each split). Train:
`Experiment.multi_step` (state donated), `steps_per_dispatch` steps per call on a feed of
[steps_per_dispatch, B] train indices, each step gathering and augmenting its batch on the devices
as training does. Eval: `Experiment.eval_feed_step` on the eval split's one batch. The feeds are
made once and reused, so no host input cost is measured.

Timing: each function is compiled ahead of time (`compile_s` = lower + compile), dispatched for at
least `warmup` steps, then for `steps` steps split into `windows` consecutive windows (train: in
dispatches of `steps_per_dispatch` steps; a step's time is its dispatch's over that count). Calls
are dispatched without waiting; each window ends with one `block_until_ready` on every output of its
calls, so a window's wall time covers their device work. The spread is over the windows' per-step
times; `dispatch_time_mean_s` is the host's share per step before the wait (near the step time:
host-bound). Peak memory is the devices' `peak_bytes_in_use` where the backend reports it (GPU,
TPU), else the peak resident memory of this process (CPU); both count since the process started, so
in a sweep they are the peak so far, and both include the synthetic splits held on the devices.
MFU = model FLOPs per second per device (6 x forward MACs per image for a train step, 2 x for eval)
over the device's dense bfloat16 peak (plan.PEAK_FLOPS), whatever the dtype.
"""

import dataclasses
import json
import math
import os
import platform
import re
import resource
import sys
import time
from functools import partial
from itertools import islice
from typing import Any, Callable, NamedTuple, Optional

import flax
import jax
import numpy as np
from absl import flags

from resnet_jax import cli, compiled_memory, experiment, parallel, plan
from resnet_jax.config import base_config, validate_config
from resnet_jax.data.base import stack_feeds
from resnet_jax.errors import ConfigError, FlagError
from resnet_jax.models.registry import DTYPES, get_spec
from resnet_jax.models.summary import count_params

MODES = ("train", "eval", "both")
MAX_BATCH_STEP = 8  # --max_batch searches per-device batches in multiples of this
# The flag behind each config field that experiment_config sets from the options ("model": the
# model's name; "model.<option>": an option of the model).
FLAG_OF_FIELD = {"seed": "seed", "global_batch_size": "batch_size", "eval_batch_size": "batch_size",
                 "data.num_train_examples": "batch_size", "data.num_eval_examples": "batch_size",
                 "model": "model", "model.dtype": "dtype", "model.bn_group_size": "bn_group_size",
                 "data.image_size": "image_size", "data.num_classes": "num_classes",
                 "steps_per_dispatch": "steps_per_dispatch", "model.remat": "remat",
                 "accumulation_steps": "accumulation_steps"}


@dataclasses.dataclass(frozen=True)
class Options:
    """What to measure. batch_sizes are global (split over the devices), one run per entry, and
    per entry of remat (model.remat off and/or on, run one after the other)."""

    model: str
    batch_sizes: tuple[int, ...] = (128,)
    image_size: Optional[int] = None  # default: 224 for ImageNet models, 32 for CIFAR models
    dtype: str = "float32"
    mode: str = "both"
    steps: int = 20
    warmup: int = 3
    windows: int = 5
    devices: Optional[int] = None  # the first N local devices; default all
    bn_group_size: Optional[int] = None
    num_classes: Optional[int] = None  # default: the model's own (1000 ImageNet, 10 CIFAR)
    seed: int = 0
    steps_per_dispatch: int = 1  # train steps per call of multi_step
    remat: tuple[bool, ...] = (False,)
    accumulation_steps: int = 1  # micro-batches per train step


def validate(opts: Options, available_devices: int) -> None:
    """Raise FlagError naming the first bad option, before anything is built or compiled.

    What the options set in the config (model, dtype, batch, image size, ...) is checked by
    config.validate_config on the config of each batch size; the rest here. Touches no device:
    `available_devices` is the number of devices the run could use."""
    if opts.mode not in MODES:
        raise FlagError(f"--mode {opts.mode!r} is not allowed; expected one of {MODES}")
    for name in ("steps", "windows", "devices", "steps_per_dispatch"):
        value = getattr(opts, name)
        if value is not None and value < 1:
            raise FlagError(f"--{name} {value} is not allowed; expected a positive int")
    if opts.warmup < 0:
        raise FlagError(f"--warmup {opts.warmup} is not allowed; expected an int >= 0")
    if opts.steps % opts.steps_per_dispatch:
        raise FlagError(f"--steps {opts.steps} is not a multiple of --steps_per_dispatch "
                        f"{opts.steps_per_dispatch}; the timed steps are whole dispatches")
    count = opts.devices or available_devices
    if count > available_devices:
        raise FlagError(f"--devices {count} asks for more than the {available_devices} local "
                        f"device(s) (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                        f"gives N)")
    if not opts.batch_sizes:
        raise FlagError("--batch_size needs at least one size")
    if not opts.remat:
        raise FlagError("--remat needs at least one of false, true")
    opts = resolved(opts)
    for batch in opts.batch_sizes:
        try:
            validate_config(experiment_config(opts, batch, opts.remat[0]), device_count=count)
        except ConfigError as e:
            flag = flag_of(str(e))
            value = batch if flag == "batch_size" else getattr(opts, flag)
            raise FlagError(f"--{flag}={value}: {e}") from None


def flag_of(config_error: str) -> str:
    """The flag that set the field a ConfigError message names: config.<field>, or a model option
    ("config.model: model option <option>=...")."""
    option = re.search(r"model option (\w+)=", config_error)
    field = f"model.{option[1]}" if option else re.match(r"config\.([\w.]+)", config_error)[1]
    return FLAG_OF_FIELD[field]


def resolved(opts: Options) -> Options:
    """`opts` with the model's default image size and class count filled in; FlagError naming
    --model for an unknown model."""
    try:
        spec = get_spec(opts.model)
    except ValueError as e:
        raise FlagError(f"--model: {e}") from None
    defaults = {"image_size": 224 if spec.stem == "imagenet" else 32,
                "num_classes": spec.num_classes}
    return dataclasses.replace(opts, **{name: default for name, default in defaults.items()
                                        if getattr(opts, name) is None})


def experiment_config(opts: Options, batch_size: int, remat: bool = False):
    """base_config() on the synthetic dataset, held on the devices with one batch of examples in
    each split, with this model, batch, image size, dtype, rematerialisation, micro-batches and
    steps per dispatch."""
    c = base_config()
    c.seed = opts.seed
    c.model.name = opts.model
    c.model.dtype = opts.dtype
    c.model.bn_group_size = opts.bn_group_size
    c.model.remat = remat
    c.accumulation_steps = opts.accumulation_steps
    c.global_batch_size = c.eval_batch_size = batch_size
    c.steps_per_dispatch = opts.steps_per_dispatch
    c.data.dataset = "synthetic"
    c.data.placement = "device"
    c.data.image_size = opts.image_size
    c.data.num_classes = opts.num_classes
    c.data.num_train_examples = c.data.num_eval_examples = batch_size
    return c


class Window(NamedTuple):
    """A timed window: its step count, its wall time up to the wait, and the part of that time the
    host spent dispatching (before the wait). Dispatch close to the whole means host-bound."""

    steps: int
    seconds: float
    dispatch_seconds: float


def time_windows(step: Callable[[], Any], steps: int, windows: int,
                 wait: Callable[[list], Any] = jax.block_until_ready,
                 steps_per_call: int = 1) -> list[Window]:
    """Call `step`, which runs `steps_per_call` steps, for `steps` steps in min(windows, calls)
    near-equal windows of whole calls; each window is timed up to `wait` on the list of its calls'
    outputs."""
    calls = steps // steps_per_call
    windows = min(windows, calls)
    sizes = [calls // windows + (i < calls % windows) for i in range(windows)]
    timed = []
    for n in sizes:
        start = time.perf_counter()
        outputs = [step() for _ in range(n)]
        dispatched = time.perf_counter()
        wait(outputs)
        end = time.perf_counter()
        timed.append(Window(n * steps_per_call, end - start, dispatched - start))
    return timed


def peak_memory(devices) -> tuple[int, str]:
    """(bytes, what they are): the largest device peak_bytes_in_use, else this process's peak RSS
    (Linux reports ru_maxrss in KiB)."""
    stats = [d.memory_stats() or {} for d in devices]
    if all("peak_bytes_in_use" in s for s in stats):
        return (max(s["peak_bytes_in_use"] for s in stats),
                "device peak_bytes_in_use (max over devices)")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def result_row(mode: str, params: int, global_batch: int, devices: int, device_kind: str,
               flops: float, compile_s: float, timed: list[Window],
               memory: tuple[int, str]) -> dict[str, Any]:
    """One result: `mode`'s figures at one global batch from its timed windows."""
    per_step = np.array([w.seconds / w.steps for w in timed])
    steps = sum(w.steps for w in timed)
    images = global_batch * steps / sum(w.seconds for w in timed)
    peak = plan.peak_flops(device_kind)
    return {
        "mode": mode, "params": params, "devices": devices, "global_batch": global_batch,
        "per_device_batch": global_batch // devices, "flops_per_image": flops,
        "compile_s": compile_s, "windows": len(timed), "step_time_mean_s": global_batch / images,
        "step_time_std_s": float(per_step.std()), "step_time_min_s": float(per_step.min()),
        "step_time_max_s": float(per_step.max()),
        "dispatch_time_mean_s": sum(w.dispatch_seconds for w in timed) / steps,
        "images_per_sec": images,
        "images_per_sec_per_device": images / devices,
        "mfu": images / devices * flops / peak if peak else None,
        "peak_memory_bytes": memory[0], "peak_memory_kind": memory[1],
    }


class _TrainDispatches:
    """One call = one dispatch of the compiled multi_step on the state it holds (donated, then
    replaced); returns its steps' metrics, which are never donated and so can be waited on."""

    def __init__(self, compiled, state, arrays, feeds):
        self.compiled, self.state, self.arrays, self.feeds = compiled, state, arrays, feeds

    def __call__(self) -> dict[str, jax.Array]:
        self.state, metrics = self.compiled(self.state, self.arrays, self.feeds)
        return metrics


def benchmark_batch(opts: Options, batch_size: int, devices: list,
                    remat: bool = False) -> list[dict[str, Any]]:
    """Result rows (train, then eval, as opts.mode asks) for one global batch size on `devices`,
    with model.remat = `remat`; `opts` must be resolved()."""
    exp = experiment.build_experiment(experiment_config(opts, batch_size, remat), devices)
    state = exp.create_train_state()
    arrays = exp.device_data()
    k = opts.steps_per_dispatch
    train_feeds = parallel.global_batch(stack_feeds(list(islice(exp.pipeline.train_feed(), k))),
                                        exp.mesh, steps_axis=True)
    eval_feed = parallel.global_batch(next(exp.pipeline.eval_feed()), exp.mesh)
    flops = {"eval": exp.plan.model.forward_flops, "train": exp.plan.model.train_flops}
    params = count_params(state.params)
    rows = []
    for mode in ("train", "eval") if opts.mode == "both" else (opts.mode,):
        remat_note = " remat" if remat else ""
        print(f"[benchmark] {opts.model} batch {batch_size}{remat_note}: {mode} step",
              file=sys.stderr, flush=True)
        steps_per_call = k if mode == "train" else 1
        start = time.perf_counter()
        if mode == "train":
            compiled = exp.multi_step.lower(state, arrays, train_feeds).compile()
            step = _TrainDispatches(compiled, state, arrays, train_feeds)
        else:
            compiled = exp.eval_feed_step.lower(state, arrays, eval_feed).compile()
            step = partial(compiled, state, arrays, eval_feed)
        compile_s = time.perf_counter() - start
        jax.block_until_ready([step() for _ in range(math.ceil(opts.warmup / steps_per_call))])
        timed = time_windows(step, opts.steps, opts.windows, steps_per_call=steps_per_call)
        if mode == "train":
            state = step.state
        row = result_row(mode, params, batch_size, exp.mesh.size, devices[0].device_kind,
                         flops[mode], compile_s, timed, peak_memory(devices))
        memory = compiled_memory.of_compiled(compiled)
        row["xla_memory_per_device"] = memory.as_dict() if memory else None
        row["xla_temp_bytes_per_device"] = memory.temp_bytes if memory else None
        row["remat"] = remat
        rows.append(row)
    return rows


def train_step_memory(opts: Options, per_device_batch: int,
                      devices: list) -> compiled_memory.CompiledMemory:
    """XLA's memory per device of the train step at `per_device_batch` on `devices`, on a host
    feed, by compiling only; `opts` must be resolved()."""
    config = experiment_config(opts, per_device_batch * len(devices), opts.remat[-1])
    config.data.placement = "host"
    run_plan = plan.plan_run(config, device_count=len(devices))
    return compiled_memory.planned_train_step_memory(config, run_plan, devices)


def max_batch(opts: Options, memory_bytes: int, devices: list) -> dict[str, Any]:
    """The largest per-device batch, a multiple of MAX_BATCH_STEP, whose compiled train step needs
    at most `memory_bytes` per device: doubling from MAX_BATCH_STEP until one does not fit, then
    bisection. {"per_device_batch" (None if even MAX_BATCH_STEP does not fit),
    "first_not_fitting", "memory_gib", "compiled": {batch: total bytes}, ...}."""
    compiled: dict[int, int] = {}

    def fits(batch: int) -> bool:
        print(f"[benchmark] {opts.model} per-device batch {batch}: compiling", file=sys.stderr,
              flush=True)
        compiled[batch] = train_step_memory(opts, batch, devices).total_bytes
        return compiled[batch] <= memory_bytes

    low, high = 0, MAX_BATCH_STEP  # low fits (0: nothing yet), high is the next to try
    while fits(high):
        low, high = high, 2 * high
    while high - low > MAX_BATCH_STEP:
        middle = (low + high) // 2 // MAX_BATCH_STEP * MAX_BATCH_STEP
        low, high = (middle, high) if fits(middle) else (low, middle)
    return {"model": opts.model, "dtype": opts.dtype, "image_size": opts.image_size,
            "remat": opts.remat[-1], "devices": len(devices), "memory_gib": memory_bytes / 2**30,
            "per_device_batch": low or None, "first_not_fitting": high,
            "compiled_bytes": {str(b): compiled[b] for b in sorted(compiled)},
            "machine": machine()}


def cpu_model() -> str:
    """The host CPU's model name: /proc/cpuinfo's "model name" (Linux), else the platform's."""
    cpu = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), "")
    return cpu or platform.processor()


def machine() -> dict[str, Any]:
    """The host, the accelerator and the library versions a result was measured with."""
    device = jax.local_devices()[0]
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version(),
            "jax": jax.__version__, "flax": flax.__version__, "backend": device.platform,
            "device_kind": device.device_kind, "local_devices": jax.local_device_count(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}


def run(opts: Options) -> dict[str, Any]:
    """Validate, then measure every batch size: {"options", "machine", "results": [row, ...]}."""
    validate(opts, jax.local_device_count())
    if jax.process_count() > 1:
        raise ValueError("the benchmark runs in one process; start it without a multi-host cluster")
    opts = resolved(opts)
    devices = jax.local_devices()[:opts.devices or None]
    results = [row for batch in opts.batch_sizes for remat in opts.remat
               for row in benchmark_batch(opts, batch, devices, remat)]
    return {"options": dataclasses.asdict(opts), "machine": machine(), "results": results}


def _bytes(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_table(report: dict[str, Any]) -> str:
    """A header naming model, input, dtype and devices, then one line per result row."""
    o, m, rows = report["options"], report["machine"], report["results"]
    steps = o["accumulation_steps"]
    micro = f", {steps} micro-batches per step" if steps > 1 else ""
    lines = [f"{o['model']} ({rows[0]['params']:,} params) at {o['image_size']}x{o['image_size']}, "
             f"{o['dtype']}, {rows[0]['devices']} x {m['device_kind']} ({m['backend']}); "
             f"synthetic on-device data; {o['steps']} timed steps in {rows[0]['windows']} windows "
             f"after {o['warmup']} warm-up, train {o['steps_per_dispatch']} per dispatch{micro}; "
             f"memory = {rows[0]['peak_memory_kind']}",
             f"{'mode':<6}{'batch':>7}{'/dev':>6}{'remat':>7}{'compile s':>11}{'ms/step':>11}"
             f"{'+-':>8}{'dispatch':>10}{'img/s':>11}{'img/s/dev':>11}{'MFU':>7}{'peak mem':>12}"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        lines.append(f"{r['mode']:<6}{r['global_batch']:>7}{r['per_device_batch']:>6}"
                     f"{'on' if r['remat'] else 'off':>7}"
                     f"{r['compile_s']:>11.2f}{1e3 * r['step_time_mean_s']:>11.2f}"
                     f"{1e3 * r['step_time_std_s']:>8.2f}{1e3 * r['dispatch_time_mean_s']:>10.2f}"
                     f"{r['images_per_sec']:>11,.1f}"
                     f"{r['images_per_sec_per_device']:>11,.1f}{mfu:>7}"
                     f"{_bytes(r['peak_memory_bytes']):>12}")
    return "\n".join(lines)


def define_flags() -> None:
    """The command's flags (also read by resnet_jax.torch_reference)."""
    flags.DEFINE_string("model", None, "A registered name, e.g. resnet50.", required=True)
    flags.DEFINE_list("batch_size", ["128"], "Global batch size(s), comma-separated to sweep.")
    flags.DEFINE_integer("image_size", None, "Default 224 (ImageNet models), 32 (CIFAR).")
    flags.DEFINE_string("dtype", "float32", f"One of {sorted(DTYPES)}.")
    flags.DEFINE_string("mode", "both", f"One of {MODES}.")
    flags.DEFINE_integer("steps", 20, "Timed steps (a multiple of --steps_per_dispatch).")
    flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling (whole dispatches).")
    flags.DEFINE_integer("windows", 5, "Timed windows, each ended by block_until_ready.")
    flags.DEFINE_integer("devices", None, "Use the first N local devices (default all).")
    flags.DEFINE_integer("bn_group_size", None, "Examples per BatchNorm group.")
    flags.DEFINE_integer("num_classes", None, "Default: the model's own.")
    flags.DEFINE_integer("seed", 0, "Seed of the parameters and the synthetic data.")
    flags.DEFINE_integer("steps_per_dispatch", 1, "Train steps per dispatch (one compiled call); "
                         "a step's time is the dispatch's over this count.")
    flags.DEFINE_list("remat", ["false"], "Rematerialise each residual block in the backward "
                      "pass: false, true, or false,true to measure both, one after the other.")
    flags.DEFINE_integer("accumulation_steps", 1, "Micro-batches per train step "
                         "(config.accumulation_steps).")
    flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
    flags.DEFINE_bool("max_batch", False, "Run nothing: find the largest per-device batch (a "
                      f"multiple of {MAX_BATCH_STEP}) whose compiled train step fits "
                      "--memory_gib.")
    flags.DEFINE_float("memory_gib", None, "GiB per device for --max_batch.")


def options_from_flags() -> tuple[Options, Optional[str]]:
    """The flags of define_flags -> (Options, the --json path or None)."""
    f = flags.FLAGS
    try:
        batch_sizes = tuple(int(b) for b in f.batch_size)
    except ValueError:
        raise FlagError(f"--batch_size={','.join(f.batch_size)}: expected ints separated by "
                        "commas") from None
    remat_values = {"false": False, "true": True}
    if not set(f.remat) <= set(remat_values):
        raise FlagError(f"--remat={','.join(f.remat)}: expected false, true or false,true")
    names = ("model", "image_size", "dtype", "mode", "steps", "warmup", "windows", "devices",
             "bn_group_size", "num_classes", "seed", "steps_per_dispatch", "accumulation_steps")
    return Options(batch_sizes=batch_sizes, remat=tuple(remat_values[v] for v in f.remat),
                   **{n: f[n].value for n in names}), f.json


def report(result: dict[str, Any], json_path: Optional[str]) -> None:
    """Print `result` as a table; also write it to `json_path` when given."""
    print(format_table(result))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)


def run_max_batch(opts: Options, memory_gib: Optional[float]) -> dict[str, Any]:
    """Validate, then max_batch for `memory_gib` GiB per device on the --devices."""
    if memory_gib is None or memory_gib <= 0:
        raise FlagError(f"--memory_gib={memory_gib}: --max_batch needs a positive number of GiB")
    if len(opts.remat) > 1:
        raise FlagError("--remat: --max_batch takes one value, false or true")
    validate(opts, jax.local_device_count())
    opts = resolved(opts)
    return max_batch(opts, int(memory_gib * 2**30), jax.local_devices()[:opts.devices or None])


def format_max_batch(result: dict[str, Any]) -> str:
    r = result
    fits = (f"per-device batch {r['per_device_batch']} fits" if r["per_device_batch"]
            else "no per-device batch fits")
    return (f"{r['model']}{' (remat)' if r['remat'] else ''} {r['dtype']} "
            f"{r['image_size']}x{r['image_size']} on {r['devices']} x "
            f"{r['machine']['device_kind']}, {r['memory_gib']:.2f} GiB per device: {fits}; "
            f"{r['first_not_fitting']} does not (compiled train step: "
            + ", ".join(f"{b}: {compiled_memory.format_bytes(n)}"
                        for b, n in r["compiled_bytes"].items()) + ")")


def main(argv) -> None:
    del argv
    opts, json_path = options_from_flags()
    if flags.FLAGS.max_batch:
        result = run_max_batch(opts, flags.FLAGS.memory_gib)
        print(format_max_batch(result))
        if json_path:
            with open(json_path, "w") as f:
                json.dump(result, f, indent=2)
        return
    report(run(opts), json_path)


if __name__ == "__main__":
    define_flags()
    cli.run(main)
