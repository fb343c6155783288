"""The sweep runner (printed commands and a tiny real seeded sweep, plotted and tabled), the
error-curve plot, and the gradient-flow analysis on a tiny batch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.data.embedded import load_digits_split
from resnet_jax.experiments import gradient_flow, plot, sweep, table
from resnet_jax.metric_writers import read_metrics
from resnet_jax.models import create_model
from train_cli import MODEL
from unoptimised import unoptimised

REPO = Path(__file__).resolve().parents[1]
DEGRADATION = str(REPO / "configs/degradation.py")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_split_specs_keeps_commas_inside_an_argument():
    assert sweep.split_specs(["configs/cifar.py:plain20,configs/cifar.py:plain56",
                              "configs/cifar_preact.py:resnet164,cifar100", "configs/x.py"]) == [
        "configs/cifar.py:plain20", "configs/cifar.py:plain56",
        "configs/cifar_preact.py:resnet164,cifar100", "configs/x.py"]
    assert sweep.run_name("configs/cifar_preact.py:resnet164,cifar100") == \
        "cifar_preact-resnet164-cifar100"


def _command(module, *args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd, env=env)


def _installed_package(root: Path) -> dict:
    """An environment whose resnet_jax is a copy of the package alone under `root`, as a
    non-editable install has it: no train.py, no configs/."""
    shutil.copytree(REPO / "resnet_jax", root / "resnet_jax",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dict(os.environ, PYTHONPATH=str(root))


def test_print_only_prints_one_command_per_config_and_runs_nothing(tmp_path):
    done = _command("resnet_jax.experiments.sweep",
                    "--configs=configs/cifar.py:plain20,configs/cifar.py:resnet20 "
                    "configs/cifar_preact.py:resnet164,cifar100", "--workdir_root",
                    str(tmp_path / "runs"), "--print_only", "--config.seed=3")
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and len(lines) == 3, done.stderr[-2000:]
    assert all(line.startswith(f"{sys.executable} -m resnet_jax.train_command --config configs/")
               and line.endswith("--config.seed=3") for line in lines)
    assert f"--workdir {tmp_path}/runs/cifar-plain20 " in lines[0]
    assert "--config configs/cifar_preact.py:resnet164,cifar100 " in lines[2]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("module, args, message", [
    ("resnet_jax.experiments.sweep", ["--configs=configs/degradation.py:plain20",
                                      "--workdir_root=runs", "--print_only", "--steps=3"], "steps"),
    ("resnet_jax.experiments.sweep", ["--configs=configs/degradation.py:plain20",
                                      "--workdir_root=runs", "--print_only", "--seeds=0"],
     "--seeds='0' is not allowed"),
    ("resnet_jax.experiments.sweep", ["--configs=configs/degradation.py:plain20",
                                      "--workdir_root=runs", "--print_only", "--seeds=2",
                                      "--config.seed=1"], "--seeds and --config.seed"),
    ("resnet_jax.experiments.plot", ["--out=x.png"], "give the workdirs to plot"),
    ("resnet_jax.experiments.plot", ["--out=x.png", "docs"], "docs is neither a run's workdir"),
    ("resnet_jax.experiments.table", ["--workdir_root=docs"], "--workdir_root=docs: no runs found"),
    ("resnet_jax.experiments.gradient_flow", ["--out=x.png"], "give at least one --model"),
])
def test_experiment_commands_report_bad_arguments_in_one_line(module, args, message):
    done = _command(module, *args)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"python -m {module}: error: ") and message in lines[0], lines


def test_tiny_seeded_sweep_then_plot_and_table(tmp_path):
    """The sweep runs from outside the repository with the package alone, as installed; its two
    seeds' runs differ, and the plot and the table read them."""
    overrides = [f"--config.model.name={MODEL}", "--config.schedule.length=4",
                 "--config.eval_every_steps=2", "--config.log_every_steps=1",
                 "--config.global_batch_size=32", "--config.eval_batch_size=40",
                 "--config.checkpoint_every_steps=100"]
    env = _installed_package(tmp_path / "site")
    done = _command("resnet_jax.experiments.sweep", f"--configs={DEGRADATION}:resnet20",
                    "--seeds=2", "--workdir_root", str(tmp_path / "runs"), *overrides,
                    cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    workdirs = [tmp_path / "runs" / "degradation-resnet20" / f"seed{s}" for s in (0, 1)]
    assert [json.loads((w / "config.json").read_text())["seed"] for w in workdirs] == [0, 1]
    curves = [plot.error_curve(str(w), "train") for w in workdirs]
    assert curves[0][0] == curves[1][0] == [1, 2, 3, 4] and curves[0][1] != curves[1][1]
    assert all(0 <= e <= 100 for _, errors in curves for e in errors)
    assert [[r["step"] for r in read_metrics(str(w), "eval")] for w in workdirs] == [[2, 4]] * 2

    done = _command("resnet_jax.experiments.plot", f"--out={tmp_path / 'fig' / 'curves.png'}",
                    *map(str, workdirs))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "fig" / "curves.png").read_bytes()[:8] == PNG_MAGIC
    (row,), notes = table.aggregate(str(tmp_path / "runs"))
    finals = [100 * (1 - read_metrics(str(w), "eval")[-1]["top1"]) for w in workdirs]
    assert notes == [] and row.config == "degradation-resnet20" and row.errors == tuple(finals)


def test_branch_output_layer_is_the_last_bn_or_the_last_preact_conv():
    layers = {"conv1": 1, "bn1": 2, "conv2": 3, "bn2": 4, "shortcut_bn": 5}
    assert gradient_flow._branch_output_layer(layers, preact=False) == 4
    assert gradient_flow._branch_output_layer(layers, preact=True) == 3


def test_gradient_flow_at_init_plain_vs_residual(tmp_path):
    (images, labels), _ = load_digits_split()
    images, labels = jnp.asarray(images[:16]), jnp.asarray(labels[:16])
    results = []
    for name in ("cifar_plain20", "cifar_resnet20"):
        model = create_model(name)
        variables = unoptimised(lambda: model.init(jax.random.key(0), images[:1], train=False))
        stats = gradient_flow.make_block_statistics(model)(variables, images, labels)
        assert stats["blocks"][0] == "stage1_block1" and len(stats["blocks"]) == 9
        assert np.all(np.isfinite(stats["grad_norm"])) and np.all(stats["grad_norm"] > 0)
        assert np.all(np.isfinite(stats["response_std"])) and np.all(stats["response_std"] > 0)
        results.append({"label": name, "step": 0, **stats})
    plain, residual = (r["grad_norm"] for r in results)
    # Measured: with BN, the plain net's gradient grows toward the input far faster than the
    # residual net's (plain-56 vs ResNet-56 at init: first/last block 2,700x vs 11x).
    assert plain[0] / plain[-1] > residual[0] / residual[-1]
    out = gradient_flow.plot_block_statistics(results, str(tmp_path / "flow.png"))
    with open(out, "rb") as f:
        assert f.read(8) == PNG_MAGIC
