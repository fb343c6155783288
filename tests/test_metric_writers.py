"""Metric files: JSON lines (appended locally, one object per writer session on an object store) and
TensorBoard event files that TensorBoard's own reader accepts, written without TensorFlow."""

import subprocess
import sys

from resnet_jax import storage
from resnet_jax.metric_writers import MetricWriter, read_metrics
from train_cli import REPO


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of the event files in `folder`, by TensorBoard's reader."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: [(s.step, s.value) for s in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def test_jsonl_and_tensorboard_records_round_trip(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(10, "train", {"loss": 1.5, "top1": 0.25})
    writer.write(20, "eval", {"loss": 1.25, "top1": 0.5})
    writer.close()
    assert [(r["step"], r["split"], r["loss"]) for r in read_metrics(str(tmp_path))] == [
        (10, "train", 1.5), (20, "eval", 1.25)]
    assert read_metrics(str(tmp_path), "eval")[0]["top1"] == 0.5
    assert read_scalars(tmp_path / "tensorboard" / "train") == {"loss": [(10, 1.5)],
                                                                 "top1": [(10, 0.25)]}


def test_a_second_writer_keeps_the_first_ones_lines(tmp_path):
    for step in (1, 2):
        writer = MetricWriter(str(tmp_path))
        writer.write(step, "train", {"loss": float(step)})
        writer.close()
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2]


def test_object_store_sessions_own_one_object_each(tmp_path, monkeypatch):
    """Where there is no append (gs://), each session rewrites only its own object."""
    monkeypatch.setattr(storage, "is_object_store", lambda path: True)
    sessions = iter(["20260101T000000Z.h.1", "20260101T000001Z.h.2"])
    monkeypatch.setattr(storage, "session_name", lambda: next(sessions))
    for step in (1, 2):
        writer = MetricWriter(str(tmp_path))
        writer.write(step, "train", {"loss": 1.0})
        writer.write(step + 10, "eval", {"loss": 1.0})
        writer.close()
    assert sorted(p.name for p in tmp_path.glob("metrics*")) == [
        "metrics.20260101T000000Z.h.1.jsonl", "metrics.20260101T000001Z.h.2.jsonl"]
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 11, 2, 12]
    assert read_scalars(tmp_path / "tensorboard" / "eval") == {"loss": [(11, 1.0), (12, 1.0)]}


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=False)
    writer.write(1, "train", {"loss": 1.0})
    writer.close()
    assert not any(tmp_path.iterdir())


def test_writing_metrics_does_not_import_tensorflow(tmp_path):
    code = ("import sys; from resnet_jax.metric_writers import MetricWriter; "
            f"w = MetricWriter({str(tmp_path)!r}); w.write(1, 'train', {{'loss': 1.0}}); w.close(); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"))
