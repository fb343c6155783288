"""Run a list of configs (each over several seeds) one after another, or print their train
commands for a cluster.

    python -m resnet_jax.experiments.sweep --workdir_root runs/fig6 \
        --configs configs/cifar.py:plain20,configs/cifar.py:plain56 [--seeds=5] [--print_only] \
        [--config.schedule.length=1000 ...]

`--configs` takes config specs separated by commas (or spaces, quoted); a comma-separated piece without ".py"
continues the previous spec's argument (configs/cifar_preact.py:resnet164,cifar100 is one spec).
Every other `--config.<field>=<value>` is passed to every run. Without --seeds each run writes to
<workdir_root>/<name> (local, made absolute, or gs://...) with the config's own seed, name = the
config file's stem and its argument ("cifar-plain20").

`--seeds` runs every config once per seed, each with `--config.seed=<s>` in
<workdir_root>/<name>/seed<s> (experiments.runs, the layout the table and the plot read):
`--seeds=5` is a count, seeds 0..4; a comma-separated list is those seeds, `--seeds=0,3,7` (one
explicit seed: `--seeds=7,`). Runs go seed by seed (every config at the first seed, then every
config at the next), so a sweep cut short still compares all configs. --seeds and --config.seed
together are an error.
Runs are separate processes of the train command (`python -m resnet_jax.train_command`, what the
repository's train.py runs; through the package, so the sweep works wherever resnet_jax is
installed), so a run resumes if the sweep is started again, and a finished run reports that it is
complete and exits 0 (a few seconds of start-up each). Relative config paths are read from the
working directory.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

from absl import flags

from resnet_jax import cli, storage
from resnet_jax.errors import FlagError
from resnet_jax.experiments import runs

TRAIN_MODULE = "resnet_jax.train_command"


def split_specs(values: list[str]) -> list[str]:
    """Config specs from the --configs values (see the module docstring for the comma rule)."""
    specs: list[str] = []
    for value in values:
        for piece in value.split(","):
            if not piece:
                continue
            if ".py" in piece or not specs:
                specs.append(piece)
            else:
                specs[-1] += "," + piece
    return specs


def run_name(spec: str) -> str:
    """'configs/cifar.py:plain20' -> 'cifar-plain20'; commas in the argument become '-'."""
    path, _, arg = spec.partition(":")
    stem = Path(path).stem
    return f"{stem}-{arg.replace(',', '-')}" if arg else stem


def parse_seeds(value: str) -> list[int]:
    """The --seeds value as the list of seeds: "5" -> [0, 1, 2, 3, 4]; "0,3,7" -> [0, 3, 7];
    "7," -> [7]. Raises FlagError naming --seeds for anything else."""
    allowed = ("a positive count (--seeds=5: seeds 0..4) or a comma-separated list of distinct "
               "non-negative seeds (--seeds=0,3,7; one seed: --seeds=7,)")
    pieces = [p.strip() for p in value.split(",") if p.strip()]
    if not pieces or not all(re.fullmatch(r"[0-9]+", p) for p in pieces):
        raise FlagError(f"--seeds={value!r} is not allowed; expected {allowed}")
    numbers = [int(p) for p in pieces]
    if "," in value:
        if len(set(numbers)) != len(numbers):
            raise FlagError(f"--seeds={value!r} repeats a seed; expected {allowed}")
        return numbers
    if numbers[0] == 0:
        raise FlagError(f"--seeds={value!r} is not allowed; expected {allowed}")
    return list(range(numbers[0]))


def train_commands(specs: list[str], workdir_root: str, overrides: list[str],
                   seeds: Optional[list[int]] = None) -> list[list[str]]:
    """One train command (argument list) per spec, or with `seeds` one per (seed, spec),
    seed-major, each with --config.seed=<s> and its own workdir (runs.seed_workdir)."""
    def command(spec: str, workdir, extra: list[str]) -> list[str]:
        return [sys.executable, "-m", TRAIN_MODULE, "--config", spec, "--workdir", str(workdir),
                *overrides, *extra]

    if seeds is None:
        return [command(spec, storage.path(workdir_root) / run_name(spec), []) for spec in specs]
    return [command(spec, runs.seed_workdir(workdir_root, run_name(spec), seed),
                    [f"--config.seed={seed}"])
            for seed in seeds for spec in specs]


def define_flags() -> None:
    flags.DEFINE_string("configs", None, "Config specs file.py[:arg], separated by commas or spaces.",
                        required=True)
    flags.DEFINE_string("workdir_root", None, "Folder (or gs:// URL) of the runs' workdirs.",
                        required=True)
    flags.DEFINE_bool("print_only", False, "Print the commands; run nothing.")
    flags.DEFINE_string("seeds", None, "Run each config over these seeds: a count (5: seeds 0..4) "
                        "or a comma-separated list (0,3,7; one seed: 7,).")


def main(argv) -> int:
    """Runs (or prints) one train command per spec; argv[1:] are the --config.<field>=<value>
    overrides passed to every run. Returns the first failing run's exit status, else 0."""
    f = flags.FLAGS
    overrides = argv[1:]
    seeds = None
    if f.seeds is not None:
        seeds = parse_seeds(f.seeds)
        if any(o.split("=")[0] == "--config.seed" for o in overrides):
            raise FlagError("--seeds and --config.seed both set the seed; give one of them")
    commands = train_commands(split_specs(f.configs.split()), f.workdir_root, overrides, seeds)
    for i, command in enumerate(commands, start=1):
        print(shlex.join(command), flush=True)
        if f.print_only:
            continue
        print(f"[sweep] run {i}/{len(commands)}", flush=True)
        code = subprocess.run(command).returncode
        if code:
            print(f"[sweep] run {i} failed with exit status {code}; stopping", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main, pass_through="--config.")
