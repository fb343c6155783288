"""Metric files: JSON lines, and TensorBoard event files that TensorFlow's reader accepts."""

import pytest

from resnet_jax.metric_writers import MetricWriter, read_metrics


def test_jsonl_and_tensorboard_records_round_trip(tmp_path):
    writer = MetricWriter(str(tmp_path))
    writer.write(10, "train", {"loss": 1.5, "top1": 0.25})
    writer.write(20, "eval", {"loss": 1.25, "top1": 0.5})
    writer.close()
    assert [(r["step"], r["split"], r["loss"]) for r in read_metrics(str(tmp_path))] == [
        (10, "train", 1.5), (20, "eval", 1.25)]
    assert read_metrics(str(tmp_path), "eval")[0]["top1"] == 0.5

    tf = pytest.importorskip("tensorflow")
    from tensorboard.compat.proto.event_pb2 import Event

    (events_file,) = (tmp_path / "tensorboard" / "train").iterdir()
    # TFRecordDataset checks both CRCs of every record.
    records = [Event.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(events_file))]
    assert records[0].file_version == "brain.Event:2"
    values = {v.tag: v.simple_value for v in records[1].summary.value}
    assert records[1].step == 10 and values == {"loss": 1.5, "top1": 0.25}


def test_disabled_writer_writes_nothing(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=False)
    writer.write(1, "train", {"loss": 1.0})
    writer.close()
    assert not any(tmp_path.iterdir())
