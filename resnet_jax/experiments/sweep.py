"""Run a list of configs one after another, or print their train.py commands for a cluster.

    python -m resnet_jax.experiments.sweep --workdir_root runs/fig6 \
        --configs configs/cifar.py:plain20,configs/cifar.py:plain56 [--print_only] \
        [--config.schedule.length=1000 ...]

`--configs` takes config specs separated by commas (or spaces, quoted); a comma-separated piece without ".py"
continues the previous spec's argument (configs/cifar_preact.py:resnet164,cifar100 is one spec).
Every other `--config.<field>=<value>` is passed to every run. Each run writes to
<workdir_root>/<name> (local, made absolute, or gs://...), with name = the config file's stem and its
argument ("cifar-plain20").
Runs are separate train.py processes, so a run resumes if the sweep is started again.
"""

import shlex
import subprocess
import sys
from pathlib import Path

from absl import flags

from resnet_jax import cli, storage

TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "train.py"


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


def train_commands(specs: list[str], workdir_root: str, overrides: list[str]) -> list[list[str]]:
    """One train.py argument list per spec."""
    return [[sys.executable, str(TRAIN_SCRIPT), "--config", spec, "--workdir",
             str(storage.path(workdir_root) / run_name(spec)), *overrides]
            for spec in specs]


def define_flags() -> None:
    flags.DEFINE_string("configs", None, "Config specs file.py[:arg], separated by commas or spaces.",
                        required=True)
    flags.DEFINE_string("workdir_root", None, "Folder (or gs:// URL) of the runs' workdirs.",
                        required=True)
    flags.DEFINE_bool("print_only", False, "Print the commands; run nothing.")


def main(argv) -> int:
    """Runs (or prints) one train.py command per spec; argv[1:] are the --config.<field>=<value>
    overrides passed to every run. Returns the first failing run's exit status, else 0."""
    f = flags.FLAGS
    commands = train_commands(split_specs(f.configs.split()), f.workdir_root, argv[1:])
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
