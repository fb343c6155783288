"""The command line as a researcher meets it: one-line errors with exit 2, --dry_run without the
dataset, the start-up header, the final summary, and a finished run that says so."""

import json
import subprocess
import sys

import jax
import pytest

from model_traces import traced
from resnet_jax.models import create_model
from resnet_jax.training import train_and_evaluate
from train_cli import FEW_STEPS, MODEL, REPO, env_with_devices, tiny_config


def _run(script, *args, timeout=120):
    return subprocess.run([sys.executable, str(REPO / script), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO, env=env_with_devices(1))


def _assert_one_line_error(result, program, *fragments):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in lines if line.startswith(f"{program}: error: ")]
    assert len(errors) == 1 and len(lines) <= 2, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.mark.parametrize("args, fragments", [
    (["--config.schedule.base_lrr=0.1"],
     ["--config.schedule.base_lrr", "no field 'base_lrr'", "did you mean 'base_lr'"]),
    (["--config.model.name=resnet51"], ["config.model", "unknown model 'resnet51'", "resnet50"]),
    (["--config.seed=zero"], ["--config.seed=zero"]),
    (["--config.schedule.length=0"], ["config.schedule.length=0", "positive"]),
    (["--config=configs/no_such_file.py"], ["--config", "no_such_file.py"]),
    (["--config=configs/imagenet.py:resnet5"], ["'resnet5' is not allowed", "resnet50"]),
    (["--no_such_flag=1"], ["no_such_flag"]),
    (["stray_argument"], ["unexpected arguments ['stray_argument']"]),
    ([], ["--workdir is required"]),
    (["--config.data.dataset=cifar10", "--config.data.data_dir={tmp}"],
     ["config.data.data_dir", "cifar10 is not prepared", "resnet_jax.data.prepare"]),
], ids=["typo", "model", "type", "value", "file", "variant", "flag", "argument", "workdir",
        "dataset"])
def test_train_errors_are_one_line_with_exit_2(args, fragments, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    workdir = [] if args == [] else ["--workdir", str(tmp_path / "run")]
    result = _run("train.py", *workdir, *args)
    _assert_one_line_error(result, "train.py", *fragments)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, fragments", [
    (["--workdir={tmp}/none"], ["no workdir", "does not exist"]),
    (["--workdir={tmp}", "--step=3", "--all"], ["--step and --all exclude each other"]),
    (["--workdir={tmp}", "--config.eval_batch_sise=8"], ["did you mean 'eval_batch_size'"]),
], ids=["workdir", "exclusive", "typo"])
def test_eval_errors_are_one_line_with_exit_2(args, fragments, tmp_path):
    result = _run("eval.py", *[a.format(tmp=tmp_path) for a in args])
    _assert_one_line_error(result, "eval.py", *fragments)


def test_dry_run_prints_config_model_and_schedule_from_any_directory(tmp_path):
    """train.py finds its default config wherever it is started; --dry_run writes nothing."""
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--dry_run"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env=env_with_devices(1))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "digits: 1,437 train / 360 eval examples" in out, out
    assert "Resolved config:" in out and "cifar_resnet20" in out
    assert "stage3" in out and "269,434" in out  # ResNet-20 on 1-channel digits
    assert "330 steps" in out and "step       165 (epoch    15.00): lr 0.01" in out
    assert not any(tmp_path.iterdir())


def test_the_package_train_command_needs_a_config(tmp_path):
    result = subprocess.run([sys.executable, "-m", "resnet_jax.train_command", "--dry_run"],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env=env_with_devices(1))
    _assert_one_line_error(result, "python -m resnet_jax.train_command", "--config is required")


def test_an_internal_error_keeps_its_traceback(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    raise RuntimeError('a bug in the config file')\n")
    result = _run("train.py", f"--config={broken}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr and "a bug in the config file" in result.stderr


@pytest.mark.parametrize("config, train, held_out, classes", [
    ("configs/cifar.py:resnet20", "50,000", "10,000", 10),
    # The smallest ImageNet model: the dry run compiles its train step.
    ("configs/imagenet.py:resnet18", "1,281,167", "50,000", 1000),
])
def test_dry_run_needs_no_dataset(config, train, held_out, classes, tmp_path):
    result = _run("train.py", f"--config={config}", "--dry_run",
                  f"--config.data.data_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{train} train / {held_out} eval examples, {classes} classes" in result.stdout
    assert "published sizes" in result.stdout and "not prepared" in result.stdout
    assert not any(tmp_path.iterdir())


def test_header_summary_and_a_finished_run(tmp_path, capsys):
    """What train.py prints, from train_and_evaluate in this process (the same lines through
    train.py: test_training.py's two-process run)."""
    # FEW_STEPS' schedule and periods: the session's few_steps_run compiled the same step.
    config = tiny_config({**FEW_STEPS, "schedule.length": 10})
    train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    first = capsys.readouterr().out
    params, _ = traced(create_model(MODEL), 8, 1)  # on the digits' 8x8x1 images
    for fragment in (f"model:    {MODEL}, {params:,} parameters",
                     "devices:  1 process(es) x 1 cpu device(s) = 1; global batch 64 = 64 per device",
                     "data:     digits: 1,437 train / 360 eval examples, 10 classes",
                     "length:   10 steps", "(new run)", "run complete at step 10 of 10",
                     "final top-1", "time: compile ", f"checkpoint: {tmp_path}/checkpoints/10",
                     f"evaluate:   python eval.py --workdir {tmp_path}"):
        assert fragment in first, first
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = max((r for r in records if r["split"] == "eval"), key=lambda r: r["top1"])
    assert f"best top-1 {100 * best['top1']:.2f}% (step {best['step']})" in first
    train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    again = capsys.readouterr().out
    assert "(resuming from step 10)" in again
    assert "is complete: nothing to train" in again and "run complete at step 10" in again
    assert "step " not in again.split("nothing to train")[1].split("run complete")[0]


def test_run_quiets_a_failed_saves_aftermath_and_nothing_else(tmp_path):
    """Every command goes through cli.run, which installs
    save_aftermath.quiet_failed_save_aftermath: the errors of a failed save's orphaned writes are
    dropped, any other error still prints."""
    script = tmp_path / "command.py"
    script.write_text(
        "import sys\nfrom resnet_jax import cli\n\n"
        "def main(argv):\n"
        "    for error in (RuntimeError('Event loop is closed'), ValueError('kept error')):\n"
        "        sys.excepthook(type(error), error, None)\n\n"
        "cli.run(main)\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env=env_with_devices(1))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ValueError: kept error" in result.stderr
    assert "Event loop is closed" not in result.stderr
