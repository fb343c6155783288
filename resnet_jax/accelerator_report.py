"""Everything an accelerator session should measure, in one command, within a time budget:

    python -m resnet_jax.accelerator_report --out DIR [--budget_s 480] [--smoke] [--sections ...]

Sections, in this order (each by the module that owns the measurement):
  environment    device kind, count and memory, driver, library versions, XLA flags
  steps          ResNet-50 bf16 224x224 train step at per-device batch 256, then 128, and the eval
                 step at 256 (benchmark.benchmark_batch): images/s, ms/step with its spread,
                 compile s, peak memory, XLA's compiled memory, MFU
  torch          the PyTorch reference at the same batches (torch_reference, in a subprocess with
                 JAX kept off the GPU), when torch and a GPU are present
  loop           train.py's loop (training.train_and_evaluate) on synthetic ImageNet-size data held
                 on the devices, 300 steps: images/s against the steps section's step rate
  cifar          CIFAR ResNet-20 at batch 128, data on the devices, 1 and 20 steps per dispatch,
                 2,000 steps each: steps/s and the 64,000-step wall time (the run's wall time plus
                 the remaining steps at its steady-state rate)
  digits         the digits main job (configs/default.py): final top-1 and wall time
  host_pipeline  the host input pipeline (data.benchmark, in a subprocess): images per CPU-second
                 and host bytes per image; only where TensorFlow is installed
Before each section its estimated cost (SECTION_SECONDS) is checked against what is left of
--budget_s; a section that no longer fits is skipped, and one that fails is recorded with its
error; either way the report goes on. DIR/report.json is rewritten after every section (a run cut
short keeps what it measured); DIR/report.md is one table of every figure, with ours / PyTorch
ratios. --smoke runs every section at tiny sizes (CIFAR ResNet-8 on 8x8 images, a few steps, and
the main job for 4 steps) for CI.
Nothing on the synthetic and digits paths imports TensorFlow.
"""

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

import jax
from absl import flags

from resnet_jax import benchmark, cli, storage
from resnet_jax.compiled_memory import format_bytes
from resnet_jax.errors import FlagError
from resnet_jax.loop_benchmark import run_config

REPO = Path(__file__).resolve().parents[1]
CIFAR_PAPER_STEPS = 64_000
# JAX's share of each GPU's memory, set before its backend starts (its default is 75 %): the
# PyTorch reference runs beside this process on the same GPU.
JAX_GPU_MEMORY_FRACTION = "0.5"
VERSIONS = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
            "orbax-checkpoint", "ml_collections", "numpy", "torch", "torchvision", "tensorflow")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each section measures; FULL is the report's, SMOKE the CI run's."""

    model: str
    image_size: int
    dtype: str
    per_device_batches: tuple[int, ...]  # the steps and torch sections, in this order
    steps: int
    warmup: int
    windows: int
    loop_model: str  # configs/synthetic_benchmark.py's argument
    loop_image_size: Optional[int]  # None: the config's own
    loop_per_device_batch: int
    loop_steps: int
    cifar_model: str
    cifar_batch: int
    cifar_image_size: int
    cifar_steps: int
    cifar_dispatches: tuple[int, ...]
    digits_steps: Optional[int]  # None: the main job as configured
    pipeline_args: tuple[str, ...]


FULL = Sizes(model="resnet50", image_size=224, dtype="bfloat16", per_device_batches=(256, 128),
             steps=50, warmup=5, windows=5, loop_model="resnet50", loop_image_size=None,
             loop_per_device_batch=256, loop_steps=300, cifar_model="cifar_resnet20",
             cifar_batch=128, cifar_image_size=32, cifar_steps=2_000, cifar_dispatches=(1, 20),
             digits_steps=None,
             pipeline_args=("--source", "tfds", "--num_images", "2048", "--batch_size", "64"))
# The smoke's networks: CIFAR ResNet-8, the smallest of the family (its step compiles in a third
# less time than ResNet-20's); the digits section runs the main job's own ResNet-20.
SMOKE = Sizes(model="cifar_resnet8", image_size=8, dtype="float32", per_device_batches=(8, 4),
              steps=2, warmup=1, windows=2, loop_model="cifar_resnet8", loop_image_size=8,
              loop_per_device_batch=8, loop_steps=4, cifar_model="cifar_resnet8", cifar_batch=8,
              cifar_image_size=8, cifar_steps=4, cifar_dispatches=(1, 2), digits_steps=4,
              pipeline_args=("--source", "folder", "--num_images", "48", "--num_eval_images",
                             "24", "--batch_size", "8", "--image_size", "32", "--warmup", "1",
                             "--shuffle_buffer", "0"))
# Estimated seconds per section (full, smoke): one H200 for the full run, the guesses from
# compile and step times measured elsewhere; two shared CPU cores for --smoke.
SECTION_SECONDS = {"environment": (5, 2), "steps": (130, 25), "torch": (170, 5),
                   "loop": (90, 15), "cifar": (45, 25), "digits": (35, 15),
                   "host_pipeline": (60, 30)}


class Skip(Exception):
    """A section that cannot run here; its message is the reason."""


def load_config(name: str, arg: Optional[str] = None):
    """configs/<name>.py's get_config(arg)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def environment(sizes: Sizes, report: dict) -> dict:
    devices = jax.local_devices()
    memory = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
    versions = {}
    for name in VERSIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    driver = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        driver = subprocess.run(query, capture_output=True, text=True,
                                timeout=30).stdout.strip() or None
    return {**benchmark.machine(), "device_count": jax.device_count(),
            "device_memory_bytes": memory, "driver": driver, "versions": versions}


def steps(sizes: Sizes, report: dict) -> dict:
    devices = jax.local_devices()
    rows = []
    for i, per_device in enumerate(sizes.per_device_batches):
        opts = benchmark.Options(model=sizes.model, batch_sizes=(per_device * len(devices),),
                                 image_size=sizes.image_size, dtype=sizes.dtype,
                                 mode="both" if i == 0 else "train", steps=sizes.steps,
                                 warmup=sizes.warmup, windows=sizes.windows)
        benchmark.validate(opts, len(devices))
        rows += benchmark.benchmark_batch(benchmark.resolved(opts), opts.batch_sizes[0], devices)
    return {"rows": rows}


def pytorch(sizes: Sizes, report: dict) -> dict:
    if not installed("torch"):
        raise Skip("torch is not installed")
    if jax.default_backend() not in ("gpu", "cuda"):
        raise Skip(f"no GPU (JAX's backend is {jax.default_backend()})")
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "torch.json")
        batches = ",".join(str(b) for b in sizes.per_device_batches)
        command = [sys.executable, "-m", "resnet_jax.torch_reference", "--model", sizes.model,
                   "--image_size", str(sizes.image_size), "--dtype", sizes.dtype,
                   "--batch_size", batches, "--steps", str(sizes.steps),
                   "--warmup", str(sizes.warmup), "--windows", str(sizes.windows), "--json", path]
        _run(command, dict(os.environ, JAX_PLATFORMS="cpu"))
        with open(path) as f:
            return json.load(f)


def synthetic_on_devices(model: str, image_size: Optional[int], global_batch: int, steps: int):
    """configs/synthetic_benchmark.py for `model` (image_size None: the config's own), its examples
    held on the devices (8 batches to draw from), `steps` steps evaluated and checkpointed once, at
    the end."""
    c = load_config("synthetic_benchmark", model)
    if image_size:
        c.data.image_size = image_size
    c.global_batch_size = c.eval_batch_size = global_batch
    c.data.num_train_examples = 8 * global_batch
    c.data.num_eval_examples = global_batch
    c.data.placement = "device"
    c.schedule.length = float(steps)
    c.eval_every_steps = c.checkpoint_every_steps = steps
    return c


def loop(sizes: Sizes, report: dict) -> dict:
    c = synthetic_on_devices(sizes.loop_model, sizes.loop_image_size,
                             sizes.loop_per_device_batch * jax.device_count(), sizes.loop_steps)
    c.log_every_steps = min(100, sizes.loop_steps)
    result = run_config(c)
    images = result["steps_per_s"] * c.global_batch_size if result["steps_per_s"] else None
    rows = report["sections"].get("steps", {}).get("figures", {}).get("rows", [])
    step_rate = next((r["images_per_sec"] for r in rows if r["mode"] == "train"
                      and r["per_device_batch"] == sizes.loop_per_device_batch), None)
    return {**result, "global_batch": c.global_batch_size, "images_per_s": images,
            "step_benchmark_images_per_s": step_rate,
            "loop_over_step_benchmark": images / step_rate if images and step_rate else None}


def cifar(sizes: Sizes, report: dict) -> dict:
    variants = []
    for k in sizes.cifar_dispatches:
        c = synthetic_on_devices(sizes.cifar_model, sizes.cifar_image_size, sizes.cifar_batch,
                                 sizes.cifar_steps)
        c.steps_per_dispatch = k
        c.log_every_steps = max(k, sizes.cifar_steps // 4)
        result = run_config(c)
        rate = result["steps_per_s"]
        remaining = CIFAR_PAPER_STEPS - result["steps"]
        variants.append({**result, "steps_per_dispatch": k,
                         "images_per_s": rate * c.global_batch_size if rate else None,
                         "projected_64k_wall_s": result["wall_s"] + remaining / rate
                         if rate else None})
    return {"model": sizes.cifar_model, "batch": sizes.cifar_batch,
            "image_size": sizes.cifar_image_size, "variants": variants}


def digits(sizes: Sizes, report: dict) -> dict:
    """The main job, or with sizes.digits_steps the main job cut to that many steps, its
    learning-rate drops scaled into them (the same compiled step: the schedule's numbers are its
    arguments)."""
    c = load_config("default")
    if sizes.digits_steps:
        scale = sizes.digits_steps / c.schedule.length
        c.schedule.unit, c.schedule.length = "steps", float(sizes.digits_steps)
        c.schedule.boundaries = tuple(b * scale for b in c.schedule.boundaries)
        c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = sizes.digits_steps
    return run_config(c)


def host_pipeline(sizes: Sizes, report: dict) -> dict:
    if not installed("tensorflow"):
        raise Skip("TensorFlow is not installed (the host input pipeline is tf.data)")
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "pipeline.json")
        _run([sys.executable, "-m", "resnet_jax.data.benchmark", *sizes.pipeline_args,
              "--json", path], dict(os.environ, JAX_PLATFORMS="cpu"))
        with open(path) as f:
            return json.load(f)


SECTIONS: dict[str, Callable[[Sizes, dict], dict]] = {
    "environment": environment, "steps": steps, "torch": pytorch, "loop": loop, "cifar": cifar,
    "digits": digits, "host_pipeline": host_pipeline}


def _run(command: list[str], env: dict) -> None:
    """Run a measuring command from the repository root; its output passes through. On failure,
    RuntimeError with the last lines of its stderr."""
    result = subprocess.run(command, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(result.stderr[-20_000:])
    if result.returncode:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(command[1:4])} exited with {result.returncode}: {tail}")


def write(report: dict, out: Path) -> None:
    storage.write_atomic(storage.path(str(out / "report.json")),
                         json.dumps(report, indent=1, default=str))
    storage.write_atomic(storage.path(str(out / "report.md")), format_markdown(report))


def run(out: Path, budget_s: float, smoke: bool, names: tuple[str, ...] = tuple(SECTIONS)
        ) -> dict:
    """Run the sections `names` (in SECTIONS' order) within `budget_s` seconds, writing the report
    to `out` after each; returns it."""
    sizes = SMOKE if smoke else FULL
    start = time.perf_counter()
    report = {"smoke": smoke, "budget_s": budget_s, "sizes": dataclasses.asdict(sizes),
              "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "sections": {}}
    for name, section in SECTIONS.items():
        if name not in names:
            continue
        left = budget_s - (time.perf_counter() - start)
        estimate = SECTION_SECONDS[name][smoke]
        entry: dict[str, Any]
        if estimate > left:
            entry = {"status": "skipped", "reason": f"needs about {estimate} s; {left:.0f} s of "
                                                     f"the {budget_s:.0f} s budget left"}
        else:
            print(f"[accelerator_report] {name} (about {estimate} s; {left:.0f} s left)",
                  file=sys.stderr, flush=True)
            began = time.perf_counter()
            try:
                entry = {"status": "ok", "figures": section(sizes, report)}
            except Skip as e:
                entry = {"status": "skipped", "reason": str(e)}
            except Exception as e:  # noqa: BLE001 (a failed section must not lose the others)
                traceback.print_exc()
                entry = {"status": "failed", "error": f"{type(e).__name__}: {e}"}
            entry["seconds"] = time.perf_counter() - began
        report["sections"][name] = entry
        report["wall_s"] = time.perf_counter() - start
        write(report, out)
    return report


def _fmt(value: Optional[float], spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def _bytes(n: Optional[int]) -> str:
    return "-" if n is None else format_bytes(n)


def _ratio(ours: Optional[float], theirs: Optional[float]) -> str:
    return f"{ours / theirs:.2f}" if ours and theirs else "-"


def format_markdown(report: dict) -> str:
    """One table of every figure (ours, PyTorch's, ours / PyTorch), then what was skipped or
    failed."""
    sections = report["sections"]
    figures = {name: s.get("figures") or {} for name, s in sections.items()}
    env = figures.get("environment", {})
    table = ["| section | figure | ours | PyTorch | ours / PyTorch |", "|---|---|---|---|---|"]

    def row(section: str, figure: str, ours: str, theirs: str = "", ratio: str = "") -> None:
        table.append(f"| {section} | {figure} | {ours} | {theirs} | {ratio} |")

    if env:
        row("environment", "devices", f"{env['device_count']} x {env['device_kind']} "
            f"({env['backend']})")
        row("environment", "memory per device", _bytes((env["device_memory_bytes"] or [None])[0]))
        row("environment", "versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
        row("environment", "driver; XLA_FLAGS", f"{env['driver'] or '-'}; "
            f"{env['xla_flags'] or '-'}")
    torch_rows = {(r["mode"], r["per_device_batch"]): r
                  for r in figures.get("torch", {}).get("results", [])}
    for r in figures.get("steps", {}).get("rows", []):
        t = torch_rows.get((r["mode"], r["per_device_batch"]), {})
        what = f"{r['mode']} {r['per_device_batch']}/device"
        memory = (r.get("xla_memory_per_device") or {}).get("total_bytes")
        row("steps", f"{what}: images/s per device", _fmt(r["images_per_sec_per_device"], ",.0f"),
            _fmt(t.get("images_per_sec"), ",.0f"),  # the reference runs on one GPU
            _ratio(r["images_per_sec_per_device"], t.get("images_per_sec")))
        row("steps", f"{what}: ms/step (± spread)",
            f"{1e3 * r['step_time_mean_s']:.2f} ± {1e3 * r['step_time_std_s']:.2f}",
            f"{1e3 * t['step_time_mean_s']:.2f} ± {1e3 * t['step_time_std_s']:.2f}" if t else "")
        row("steps", f"{what}: compile s", f"{r['compile_s']:.1f}", _fmt(t.get("compile_s"), ".1f"))
        row("steps", f"{what}: peak memory; XLA compiled", f"{_bytes(r['peak_memory_bytes'])}; "
            f"{_bytes(memory)}", _bytes(t.get("peak_memory_bytes")) if t else "")
        row("steps", f"{what}: MFU", _fmt(r["mfu"], ".1%"), _fmt(t.get("mfu"), ".1%"))
    if figures.get("loop"):
        f = figures["loop"]
        row("loop", f"train.py, batch {f['global_batch']}: images/s; x step benchmark",
            f"{_fmt(f['images_per_s'], ',.0f')}; {_fmt(f['loop_over_step_benchmark'], '.2f')}")
    for v in figures.get("cifar", {}).get("variants", []):
        row("cifar", f"{figures['cifar']['model']}, {v['steps_per_dispatch']} step(s)/dispatch: "
            f"steps/s; {CIFAR_PAPER_STEPS:,}-step wall", f"{_fmt(v['steps_per_s'], ',.1f')}; "
            f"{_fmt(v['projected_64k_wall_s'], ',.0f')} s")
    if figures.get("digits"):
        f = figures["digits"]
        row("digits", f"main job, {f['steps']} steps: top-1; wall",
            f"{_fmt(f['eval_top1'], '.2%')}; {f['wall_s']:.1f} s")
    if figures.get("host_pipeline"):
        f = figures["host_pipeline"]
        row("host_pipeline", "train images per CPU-second; host bytes per image",
            f"{f['train_images_per_cpu_s']:,.0f}; {f['host_bytes_per_image']:,}")
    notes = [f"- {name}: {s['status']}: {s.get('reason') or s.get('error')}"
             for name, s in sections.items() if s["status"] != "ok"]
    title = (f"# Accelerator report{' (smoke)' if report['smoke'] else ''}\n\n"
             f"Started {report['started']}; {report.get('wall_s', 0):.0f} s of a "
             f"{report['budget_s']:.0f} s budget.\n")
    return "\n".join([title, *table, "", *notes]) + "\n"


def define_flags() -> None:
    flags.DEFINE_string("out", None, "Folder for report.json and report.md.", required=True)
    flags.DEFINE_float("budget_s", 480.0, "Seconds for all sections; what no longer fits is "
                       "skipped.")
    flags.DEFINE_bool("smoke", False, "Every section at tiny sizes (CPU, CI).")
    flags.DEFINE_list("sections", list(SECTIONS), f"Sections to run, of {list(SECTIONS)}.")


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    unknown = sorted(set(f.sections) - set(SECTIONS))
    if unknown:
        raise FlagError(f"--sections: unknown {unknown}; expected some of {list(SECTIONS)}")
    if f.budget_s <= 0:
        raise FlagError(f"--budget_s={f.budget_s}: expected a positive number of seconds")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", JAX_GPU_MEMORY_FRACTION)
    out = Path(f.out)
    out.mkdir(parents=True, exist_ok=True)
    report = run(out, f.budget_s, f.smoke, tuple(f.sections))
    print(format_markdown(report))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
