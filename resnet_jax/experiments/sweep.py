"""Run a list of configs one after another, or print their train.py commands for a cluster.

    python -m resnet_jax.experiments.sweep --workdir_root runs/fig6 \
        --configs configs/cifar.py:plain20 configs/cifar.py:plain56 [--print_only] \
        [--config.schedule.length=1000 ...]

`--configs` takes config specs separated by spaces or commas; a comma-separated piece without ".py"
continues the previous spec's argument (configs/cifar_preact.py:resnet164,cifar100 is one spec).
Every other `--config.<field>=<value>` is passed to every run. Each run writes to
<workdir_root>/<name> (local, made absolute, or gs://...), with name = the config file's stem and its
argument ("cifar-plain20").
Runs are separate train.py processes, so a run resumes if the sweep is started again.
"""

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from resnet_jax import storage

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", required=True, help="config specs, file.py[:arg]")
    parser.add_argument("--workdir_root", required=True)
    parser.add_argument("--print_only", action="store_true", help="print the commands; run nothing")
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not o.startswith("--config.")]
    if bad:
        parser.error(f"unrecognised arguments {bad}; only --config.<field>=<value> pass through")
    commands = train_commands(split_specs(args.configs), args.workdir_root, overrides)
    for i, command in enumerate(commands, start=1):
        print(shlex.join(command), flush=True)
        if args.print_only:
            continue
        print(f"[sweep] run {i}/{len(commands)}", flush=True)
        code = subprocess.run(command).returncode
        if code:
            print(f"[sweep] run {i} failed with exit status {code}; stopping", file=sys.stderr)
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
