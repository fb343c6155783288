"""The accelerator report: its --smoke run end to end where TensorFlow cannot be imported (as on the
GPU machine's image), and its budget and failure handling."""

import json
import subprocess
import sys

import pytest

from resnet_jax import accelerator_report
from train_cli import REPO, env_with_devices

# Runs the report with `import tensorflow` (and tensorflow_datasets) failing, as on a machine
# without them: a meta path finder ahead of all others refuses them.
WITHOUT_TENSORFLOW = """
import importlib.abc, runpy, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTensorFlow())
runpy.run_module("resnet_jax.accelerator_report", run_name="__main__", alter_sys=True)
"""


def test_smoke_report_runs_every_section_without_tensorflow(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, "--out", str(tmp_path),
                             "--smoke", "--budget_s", "900"], env=env_with_devices(1), cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    status = {name: s["status"] for name, s in report["sections"].items()}
    assert status == {"environment": "ok", "steps": "ok", "torch": "skipped", "loop": "ok",
                      "cifar": "ok", "digits": "ok", "host_pipeline": "skipped"}
    sections = report["sections"]
    assert "TensorFlow is not installed" in sections["host_pipeline"]["reason"]
    assert "torch" in sections["torch"]["reason"] or "GPU" in sections["torch"]["reason"]
    sizes = accelerator_report.SMOKE
    rows = sections["steps"]["figures"]["rows"]
    assert [(r["mode"], r["per_device_batch"]) for r in rows] == [
        ("train", sizes.per_device_batches[0]), ("eval", sizes.per_device_batches[0]),
        ("train", sizes.per_device_batches[1])]
    for r in rows:
        assert r["images_per_sec"] == pytest.approx(r["global_batch"] / r["step_time_mean_s"])
        assert r["xla_memory_per_device"]["total_bytes"] > 0
    loop = sections["loop"]["figures"]
    assert loop["steps"] == sizes.loop_steps
    assert loop["images_per_s"] == pytest.approx(loop["steps_per_s"] * loop["global_batch"])
    assert loop["loop_over_step_benchmark"] == pytest.approx(
        loop["images_per_s"] / rows[0]["images_per_sec"])
    variants = sections["cifar"]["figures"]["variants"]
    assert [v["steps_per_dispatch"] for v in variants] == list(sizes.cifar_dispatches)
    for v in variants:
        assert v["steps"] == sizes.cifar_steps
        assert v["projected_64k_wall_s"] == pytest.approx(
            v["wall_s"] + (64_000 - sizes.cifar_steps) / v["steps_per_s"])
    digits = sections["digits"]["figures"]
    assert digits["steps"] == sizes.digits_steps and 0 <= digits["eval_top1"] <= 1
    table = (tmp_path / "report.md").read_text()
    for name in ("environment", "steps", "loop", "cifar", "digits"):
        assert f"| {name} |" in table
    assert "- host_pipeline: skipped: TensorFlow is not installed" in table


def test_a_failing_section_is_recorded_and_what_no_longer_fits_is_skipped(tmp_path, monkeypatch):
    written = []

    def fails(sizes, report):
        raise RuntimeError("out of memory")

    def slow(sizes, report):
        clock[0] += 50
        return {"written_before": sorted(json.loads((tmp_path / "report.json").read_text())
                                         ["sections"])}

    clock = [0.0]
    monkeypatch.setattr(accelerator_report.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(accelerator_report, "SECTIONS",
                        {"environment": slow, "steps": fails, "loop": slow, "cifar": slow})
    monkeypatch.setattr(accelerator_report, "SECTION_SECONDS",
                        {"environment": (1, 1), "steps": (1, 1), "loop": (1, 1), "cifar": (60, 60)})
    monkeypatch.setattr(accelerator_report, "format_markdown",
                        lambda report: written.append(len(report["sections"])) or "")
    report = accelerator_report.run(tmp_path, budget_s=120, smoke=True)
    sections = report["sections"]
    assert sections["steps"] == {"status": "failed", "error": "RuntimeError: out of memory",
                                 "seconds": 0.0}
    assert sections["loop"]["figures"] == {"written_before": ["environment", "steps"]}
    assert sections["cifar"] == {"status": "skipped",
                                 "reason": "needs about 60 s; 20 s of the 120 s budget left"}
    assert written == [1, 2, 3, 4]  # the report is rewritten after every section
