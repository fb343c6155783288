"""The paper's Table 6 from a sweep's workdirs: method, depth, parameters, test error over seeds.

    python -m resnet_jax.experiments.table --workdir_root runs/fig6 \
        [--out_markdown docs/table6.md] [--out_csv table6.csv]

Reads every config's runs under --workdir_root (experiments.runs.sweep_configs:
<root>/<name>/seed<s>/ or <root>/<name>/; a root that is one config's folder is that config), local
or gs://, each run's config.json and metrics, and prints one row per config:

- method and depth from the model name: "plain" or "ResNet" (also "pre-act ResNet", "Wide ResNet",
  "ResNeXt"), depth = the weighted layers of the registered architecture (6n+2 for CIFAR nets);
- parameters: the trainable parameters of the model the config builds for its dataset (image size,
  channels and classes), counted by resnet_jax.models.summary, shown as the paper does ("0.27M");
- test error (%) as "best (mean ± std)" over the seeds, as the paper's Table 6. A run's error is
  100 * (1 - top1) of its final eval, the one at the last step of its schedule: the paper reports
  the error at the end of training, not the best along the way (choosing the best step would
  select on the test set). std is the sample standard deviation (ddof=1): the seeds are a sample
  of the runs the recipe can produce, and their run-to-run spread is what the column estimates
  (the population formula, ddof=0, would understate it by a factor sqrt((n-1)/n), 11 % at n=5).
  One seed: its error alone;
- seeds: the number of complete runs the numbers are over.

A run is complete when it has an eval at the last step of its schedule (`schedule.length`, through
the dataset's steps per epoch where the unit is epochs). Incomplete runs (stopped, still running,
crashed) are left out of the numbers, and a note names each with the step it reached; the notes are
printed and written under the Markdown table. The runs of one config must have the same config but
for the seed, else the command stops naming the field that differs. Markdown and CSV are written
through resnet_jax.storage (local or gs://); the CSV holds the numbers unrounded.
"""

import csv
import dataclasses
import io
import json
import re
import statistics
from typing import Optional

from absl import flags

from resnet_jax import cli, storage
from resnet_jax.config import config_from_dict, flat_fields
from resnet_jax.plan import plan_run
from resnet_jax.errors import FlagError, UserError
from resnet_jax.experiments import runs
from resnet_jax.metric_writers import read_metrics
from resnet_jax.models.registry import get_spec

# Registered name (without "cifar_" and the depth) -> the paper's name for the family.
METHODS = {"plain": "plain", "resnet": "ResNet", "preact_resnet": "pre-act ResNet",
           "wide_resnet": "Wide ResNet", "resnext": "ResNeXt"}
CSV_FIELDS = ("config", "method", "depth", "params", "best_error", "mean_error", "std_error",
              "seeds", "incomplete")


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run of a config: the step it reached, its schedule's last step, and its final test error
    in percent (None unless the run is complete)."""

    workdir: str
    step: int
    total_steps: int
    test_error: Optional[float]


@dataclasses.dataclass(frozen=True)
class TableRow:
    """One config of the sweep: its final test errors (%, one per complete run, seed order)."""

    config: str
    method: str
    depth: int
    params: int
    errors: tuple[float, ...]
    incomplete: int

    @property
    def best(self) -> float:
        return min(self.errors)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.errors)

    @property
    def std(self) -> Optional[float]:
        """Sample standard deviation (ddof=1); None for a single run."""
        return statistics.stdev(self.errors) if len(self.errors) > 1 else None


def method_and_depth(model_name: str) -> tuple[str, int]:
    """('ResNet', 20) for 'cifar_resnet20', ('plain', 56) for 'cifar_plain56', ('ResNeXt', 50) for
    'resnext50_32x4d': the depth counts the weighted layers of the registered architecture."""
    spec = get_spec(model_name)
    layers_per_block = 3 if spec.block == "bottleneck" else 2
    family = re.sub(r"\d.*$", "", model_name.removeprefix("cifar_"))
    return METHODS.get(family, family), layers_per_block * sum(spec.stage_sizes) + 2


def read_config(workdir):
    """The config a run was trained with (its config.json), as a ConfigDict."""
    return config_from_dict(json.loads((storage.path(workdir) / runs.CONFIG_FILE).read_text()))


def run_result(workdir, total_steps: int) -> RunResult:
    """The step `workdir` reached and, if it has an eval at `total_steps`, that eval's error (the
    last such record where a resumed run logged the step twice)."""
    records = read_metrics(workdir)
    final = [r for r in records if r["split"] == "eval" and r["step"] >= total_steps]
    step = max((r["step"] for r in records), default=0)
    error = 100.0 * (1.0 - final[-1]["top1"]) if final else None
    return RunResult(str(workdir), step, total_steps, error)


def _check_same_config(name: str, workdirs: list, configs: list) -> None:
    """Raise UserError naming the first field but the seed where two runs of `name` differ."""
    first = flat_fields(configs[0].to_dict())
    for workdir, config in zip(workdirs[1:], configs[1:]):
        other = flat_fields(config.to_dict())
        for field in sorted(set(first) | set(other)):
            if field != "seed" and first.get(field) != other.get(field):
                raise UserError(f"{name}: runs {workdirs[0]} and {workdir} differ in "
                                f"config.{field} ({first.get(field)!r} vs {other.get(field)!r}); "
                                "one config's runs may differ only in the seed")


def aggregate(workdir_root) -> tuple[list[TableRow], list[str]]:
    """The table's rows (sorted by method, depth, name) and the notes on the runs left out."""
    configs_runs = runs.sweep_configs(workdir_root)
    if not configs_runs:
        raise FlagError(f"--workdir_root={workdir_root}: no runs found (expected "
                        "<root>/<name>/seed<s>/config.json as sweep --seeds writes, or "
                        "<root>/<name>/config.json)")
    rows, notes = [], []
    for name, workdirs in configs_runs.items():
        configs = [read_config(w) for w in workdirs]
        _check_same_config(name, workdirs, configs)
        plan = plan_run(configs[0], device_count=1)
        results = [run_result(w, plan.total_steps) for w in workdirs]
        for r in results:
            if r.test_error is None:
                notes.append(f"{name}: left out {r.workdir}, incomplete (step {r.step:,} of "
                             f"{r.total_steps:,})")
        errors = tuple(r.test_error for r in results if r.test_error is not None)
        if not errors:
            notes.append(f"{name}: no complete run; not in the table")
            continue
        method, depth = method_and_depth(configs[0].model.name)
        rows.append(TableRow(name, method, depth, plan.model.params, errors,
                             len(results) - len(errors)))
    rows.sort(key=lambda r: (r.method.lower(), r.depth, r.config))
    return rows, notes


def format_params(count: int) -> str:
    """As the paper's Table 6: 269,722 -> '0.27M', 1,727,962 -> '1.7M', 19,421,274 -> '19.4M'."""
    millions = count / 1e6
    return f"{millions:.2f}M" if millions < 1 else f"{millions:.1f}M"


def format_error(row: TableRow) -> str:
    """'8.75 (9.12 ± 0.16)': best (mean ± std) in percent; one run: its error alone."""
    if row.std is None:
        return f"{row.best:.2f}"
    return f"{row.best:.2f} ({row.mean:.2f} ± {row.std:.2f})"


def to_markdown(rows: list[TableRow], notes: list[str]) -> str:
    """The table as Markdown, then what the numbers are, then the notes."""
    lines = ["| config | method | depth | params | test error (%): best (mean ± std) | seeds |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.config} | {r.method} | {r.depth} | {format_params(r.params)} | "
              f"{format_error(r)} | {len(r.errors)} |" for r in rows]
    lines += ["", "Test error of each run at the end of training (its final eval); best, mean and "
              "sample standard deviation (ddof=1) over the seeds."]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[TableRow]) -> str:
    """One line per row, CSV_FIELDS; errors in percent, unrounded; std empty for a single run."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([r.config, r.method, r.depth, r.params, r.best, r.mean,
                         "" if r.std is None else r.std, len(r.errors), r.incomplete])
    return out.getvalue()


def define_flags() -> None:
    flags.DEFINE_string("workdir_root", None, "The sweep's folder (or gs:// URL).", required=True)
    flags.DEFINE_string("out_markdown", None, "Also write the table as Markdown here.")
    flags.DEFINE_string("out_csv", None, "Also write the table as CSV here.")


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    rows, notes = aggregate(f.workdir_root)
    markdown = to_markdown(rows, notes)
    print(markdown, end="")
    for target, text in ((f.out_markdown, markdown), (f.out_csv, to_csv(rows))):
        if target:
            storage.write_atomic(target, text)
            print(f"wrote {target}")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
