"""The input-pipeline benchmark command runs end to end on a few images."""

import json
import subprocess
import sys

import numpy as np

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
    assert results["host_bytes_per_image"] == 64 * 64 * 3  # uint8
    assert sorted(results["resume_s_by_step"]) == ["0", "1", "2", "3", "4"]
    assert 50_000 < results["mean_jpeg_bytes"] < 200_000


def test_a_bad_flag_is_one_line_with_exit_2():
    done = _benchmark("--num_images=20", "--num_eval_images=4", "--batch_size=4")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("python -m resnet_jax.data.benchmark: error: --num_eval_images "
                                   "must exceed --batch_size (the first eval batch is not timed)")


def test_alternating_trials_take_turns_on_fresh_iterators():
    """Each trial makes a fresh iterator, the contenders take turns, and the bytes per image are
    those of the batches handed over (uint8 against float32 here)."""
    from resnet_jax.data.benchmark import alternating_trials

    started = []

    def feeds(name, dtype):
        def make():
            started.append(name)
            while True:
                yield {"image": np.zeros((4, 6, 6, 3), dtype)}
        return make

    results = alternating_trials({"ours": feeds("ours", np.uint8), "flax": feeds("flax", np.float32)},
                                 trials=3, warmup=1, timed=2)
    assert started == ["ours", "flax"] * 3
    assert results["ours"]["bytes_per_image"] == 6 * 6 * 3
    assert results["flax"]["bytes_per_image"] == 6 * 6 * 3 * 4
    assert len(results["ours"]["trials_images_per_cpu_s"]) == 3
    assert results["ours"]["images_per_cpu_s"] > 0
