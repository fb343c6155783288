"""The input-pipeline benchmark command runs end to end on a few images."""

import json
import subprocess
import sys

from train_cli import REPO


def _benchmark(*args):
    return subprocess.run([sys.executable, "-m", "resnet_jax.data.benchmark", *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_benchmark_reports_throughput_and_resume_cost(tmp_path):
    done = _benchmark("--num_images=20", "--num_eval_images=8", "--batch_size=4",
                      "--image_size=64", "--source=folder", f"--data_root={tmp_path}",
                      f"--json={tmp_path / 'results.json'}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["train_images_per_s"] > 0 and results["eval_images_per_s"] > 0
    assert sorted(results["resume_s_by_step"]) == ["0", "1", "2", "3", "4"]
    assert 50_000 < results["mean_jpeg_bytes"] < 200_000


def test_a_bad_flag_is_one_line_with_exit_2():
    done = _benchmark("--num_images=20", "--num_eval_images=4", "--batch_size=4")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("python -m resnet_jax.data.benchmark: error: --num_eval_images "
                                   "must exceed --batch_size (the first eval batch is not timed)")
