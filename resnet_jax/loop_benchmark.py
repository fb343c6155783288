"""The training loop end to end, one config under several data placements and steps per dispatch,
side by side in one process.

    python -m resnet_jax.loop_benchmark --config configs/default.py \
        --variants host:1,device:1,device:8 [--json loop.json] [--config.<field>=<value> ...]

Each variant is `placement:steps_per_dispatch` (config.data.placement, config.steps_per_dispatch)
and runs the config as train.py would (`training.train_and_evaluate`, evaluations and checkpoints
included) in a fresh temporary workdir. Reported per variant: wall time of the whole run (start-up,
compilation, training, evaluation, checkpoints), steps per second of the steady state (the mean
step time of the log windows, which leave compilation out), the final eval top-1, and the speed-ups
over the first variant.
"""

import dataclasses
import json
import tempfile
import time
from typing import Any

import jax
import numpy as np
from absl import flags

from resnet_jax import cli, storage
from resnet_jax.data import PLACEMENTS
from resnet_jax.errors import FlagError
from resnet_jax.metric_writers import read_metrics
from resnet_jax.training import train_and_evaluate


@dataclasses.dataclass(frozen=True)
class Variant:
    placement: str
    steps_per_dispatch: int

    @property
    def name(self) -> str:
        return f"{self.placement}:{self.steps_per_dispatch}"


def parse_variants(text: str) -> list[Variant]:
    """'host:1,device:8' -> variants; FlagError naming --variants for anything else."""
    variants = []
    for piece in text.split(","):
        placement, _, k = piece.strip().partition(":")
        if placement not in PLACEMENTS or not k.isdigit() or int(k) < 1:
            raise FlagError(f"--variants={text!r}: {piece!r} is not placement:steps_per_dispatch "
                            f"with placement one of {list(PLACEMENTS)} and a positive integer")
        variants.append(Variant(placement, int(k)))
    return variants


def run_variant(config, variant: Variant) -> dict[str, Any]:
    """Train `config` under `variant` in a temporary workdir; the figures described above."""
    config = config.copy_and_resolve_references()
    config.data.placement = variant.placement
    config.steps_per_dispatch = variant.steps_per_dispatch
    return {"variant": variant.name, **run_config(config)}


def run_config(config) -> dict[str, Any]:
    """Train `config` as train.py would in a temporary workdir: {"wall_s", "steps_per_s" (steady
    state: the log windows' mean step time; None without a log window), "steps", "eval_top1"
    (None without an evaluation)}."""
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        result = train_and_evaluate(config, workdir)
        wall = time.perf_counter() - start
        step_times = [r["step_time"] for r in read_metrics(workdir, "train") if "step_time" in r]
    return {"wall_s": wall,
            "steps_per_s": 1.0 / float(np.mean(step_times)) if step_times else None,
            "steps": result["step"], "eval_top1": result.get("eval", {}).get("top1")}


def format_rows(rows: list[dict]) -> str:
    base = rows[0]
    lines = [f"{'variant':>12} {'steps':>6} {'wall s':>8} {'x wall':>7} {'steps/s':>8} "
             f"{'x steps/s':>9} {'eval top1':>9}"]
    for r in rows:
        speed = r["steps_per_s"]
        ratio = speed / base["steps_per_s"] if speed and base["steps_per_s"] else float("nan")
        lines.append(f"{r['variant']:>12} {r['steps']:>6} {r['wall_s']:>8.1f} "
                     f"{base['wall_s'] / r['wall_s']:>7.2f} {speed or float('nan'):>8.2f} "
                     f"{ratio:>9.2f} " + (f"{100 * r['eval_top1']:>8.2f}%" if r["eval_top1"]
                                          is not None else f"{'-':>9}"))
    return "\n".join(lines)


def define_flags() -> None:
    cli.define_config_flag("configs/default.py", "Experiment config file (file.py[:arg]).")
    flags.DEFINE_string("variants", "host:1,device:1", "placement:steps_per_dispatch, ...")
    flags.DEFINE_string("json", None, "Also write the rows (and the machine) as JSON here.")


def main(argv) -> None:
    f = flags.FLAGS
    rows = [run_variant(f.config, v) for v in parse_variants(f.variants)]
    print(format_rows(rows))
    if f.json:
        report = {"devices": [str(d) for d in jax.devices()], "rows": rows}
        storage.write_atomic(storage.path(f.json), json.dumps(report, indent=1))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
