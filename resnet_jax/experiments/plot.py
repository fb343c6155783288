"""Training and test error against iterations, as the paper's Figures 1 and 6, with the seed spread.

    python -m resnet_jax.experiments.plot --out docs/x.png runs/a runs/b
    python -m resnet_jax.experiments.plot --out docs/fig6.png runs/fig6/*   # after sweep --seeds

Each argument is one config: a run's workdir, or a folder of seed<s> runs as sweep --seeds writes
(experiments.runs). For each run, reads its metrics (metrics.jsonl): training error = 1 - top1 of
the "train" records (the mean over each log window's batches, in training mode), test error =
1 - top1 of the "eval" records; both in percent against the step. Per config, over its seeds: the
mean training error (thin line) and mean test error (bold line), each with a shaded band from the
minimum to the maximum over the seeds (with 3-5 seeds a +- std band is itself noisy and assumes a
shape; min-max shows exactly the spread of the runs there are). Only the steps that every seed has
logged are drawn (a seed still running cuts its config's curves short). One config of one run:
its lines, no band. One colour per config. Writes a PNG with matplotlib's Agg backend.
"""

import io
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from resnet_jax import cli, storage  # noqa: E402
from resnet_jax.errors import FlagError, UserError  # noqa: E402
from resnet_jax.experiments import runs  # noqa: E402
from resnet_jax.metric_writers import read_metrics  # noqa: E402

BAND_ALPHA = {"train": 0.12, "eval": 0.25}
LINE_WIDTH = {"train": 0.8, "eval": 2.2}
SPLIT_NAME = {"train": "train", "eval": "test"}


def error_curve(workdir: str, split: str) -> tuple[list[int], list[float]]:
    """(steps, error in percent) of `split` ("train" or "eval") records of `workdir`."""
    records = read_metrics(workdir, split)
    return [r["step"] for r in records], [100.0 * (1.0 - r["top1"]) for r in records]


def seed_curves(workdirs: Sequence, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps [S], error in percent [runs, S]) of `split` over the steps every run has logged; a
    step logged twice (a resumed run) counts with its last record."""
    curves = [dict(zip(*error_curve(w, split))) for w in workdirs]
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    return np.array(steps, dtype=np.int64), np.array([[c[s] for s in steps] for c in curves],
                                                     dtype=np.float64).reshape(len(curves), -1)


def error_curves_figure(configs: Sequence[str], labels: Optional[Sequence[str]] = None,
                        title: Optional[str] = None):
    """A figure with every config's mean training (thin) and test (bold) error over its seeds, and a
    min-max band where it has more than one run. `configs`: run workdirs or seed<s> folders."""
    labels = list(labels) if labels else [storage.path(c).name for c in configs]
    if len(labels) != len(configs):
        raise ValueError(f"{len(labels)} labels for {len(configs)} workdirs")
    config_runs = [runs.config_runs(c) for c in configs]
    missing = [str(c) for c, found in zip(configs, config_runs) if not found]
    if missing:
        raise UserError(f"{missing[0]} is neither a run's workdir (no config.json) nor a folder of "
                        "seed<s> runs")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    banded = any(len(workdirs) > 1 for workdirs in config_runs)
    for i, (workdirs, label) in enumerate(zip(config_runs, labels)):
        name = f"{label} ({len(workdirs)} seeds)" if len(workdirs) > 1 else label
        for split in ("train", "eval"):
            steps, errors = seed_curves(workdirs, split)
            if not steps.size:
                continue
            ax.plot(steps, errors.mean(axis=0), color=f"C{i}", linewidth=LINE_WIDTH[split],
                    label=f"{name} {SPLIT_NAME[split]}")
            if len(workdirs) > 1:
                ax.fill_between(steps, errors.min(axis=0), errors.max(axis=0), color=f"C{i}",
                                alpha=BAND_ALPHA[split], linewidth=0)
    ax.set_xlabel("iteration")
    ax.set_ylabel("error (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title_fontsize=8,
              title="lines: mean over seeds\nshaded: min-max over seeds" if banded else None)
    if title:
        ax.set_title(title)
    return fig


def plot_error_curves(configs: Sequence[str], out: str, labels: Optional[Sequence[str]] = None,
                      title: Optional[str] = None) -> str:
    """Save error_curves_figure(configs, labels, title) to the PNG `out`; returns `out`."""
    return save_figure(error_curves_figure(configs, labels, title), out)


def save_figure(fig, out: str) -> str:
    """Write `fig` to the PNG `out` (local or gs://, creating its folder), close it, and return
    `out`."""
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    storage.write_atomic(out, png.getvalue())
    return out


def define_flags() -> None:
    flags.DEFINE_string("out", None, "PNG path (local or gs://).", required=True)
    flags.DEFINE_list("labels", None, "One per argument, comma-separated (default: folder names).")
    flags.DEFINE_string("title", None, "Figure title.")


def main(argv) -> None:
    """argv[1:]: the configs to plot (run workdirs or folders of seed<s> runs)."""
    if len(argv) < 2:
        raise FlagError("give the workdirs to plot after the flags, e.g. runs/degradation/* or "
                        "runs/fig6/* (folders of seed<s> runs)")
    f = flags.FLAGS
    try:
        print(plot_error_curves(argv[1:], f.out, f.labels, f.title))
    except ValueError as e:
        raise FlagError(f"--labels: {e}") from None


if __name__ == "__main__":
    define_flags()
    cli.run(main, arguments="WORKDIR ...")
