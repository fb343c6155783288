"""Training and test error against iterations, as the paper's Figures 1 and 6.

    python -m resnet_jax.experiments.plot --out docs/x.png runs/a runs/b

For each workdir, reads <workdir>/metrics.jsonl: training error = 1 - top1 of the "train" records
(the mean over each log window's batches, in training mode), test error = 1 - top1 of the "eval"
records; both in percent against the step. Thin line: training error; bold line: test error; one
colour per run. Writes a PNG with matplotlib's Agg backend.
"""

import io
from typing import Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from absl import flags  # noqa: E402

from resnet_jax import cli, storage  # noqa: E402
from resnet_jax.errors import FlagError  # noqa: E402
from resnet_jax.metric_writers import read_metrics  # noqa: E402


def error_curve(workdir: str, split: str) -> tuple[list[int], list[float]]:
    """(steps, error in percent) of `split` ("train" or "eval") records of `workdir`."""
    records = read_metrics(workdir, split)
    return [r["step"] for r in records], [100.0 * (1.0 - r["top1"]) for r in records]


def plot_error_curves(workdirs: Sequence[str], out: str, labels: Optional[Sequence[str]] = None,
                      title: Optional[str] = None) -> str:
    """Draw every run's training (thin) and test (bold) error in one axes; save to `out`."""
    labels = list(labels) if labels else [storage.path(w).name for w in workdirs]
    if len(labels) != len(workdirs):
        raise ValueError(f"{len(labels)} labels for {len(workdirs)} workdirs")
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for i, (workdir, label) in enumerate(zip(workdirs, labels)):
        color = f"C{i}"
        ax.plot(*error_curve(workdir, "train"), color=color, linewidth=0.8, label=f"{label} train")
        steps, error = error_curve(workdir, "eval")
        if steps:
            ax.plot(steps, error, color=color, linewidth=2.2, label=f"{label} test")
    ax.set_xlabel("iteration")
    ax.set_ylabel("error (%)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title)
    return save_figure(fig, out)


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
    flags.DEFINE_list("labels", None, "One per workdir, comma-separated (default: folder names).")
    flags.DEFINE_string("title", None, "Figure title.")


def main(argv) -> None:
    """argv[1:]: the workdirs to plot."""
    if len(argv) < 2:
        raise FlagError("give the workdirs to plot after the flags, e.g. runs/degradation/*")
    f = flags.FLAGS
    try:
        print(plot_error_curves(argv[1:], f.out, f.labels, f.title))
    except ValueError as e:
        raise FlagError(f"--labels: {e}") from None


if __name__ == "__main__":
    define_flags()
    cli.run(main, arguments="WORKDIR ...")
