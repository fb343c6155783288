"""Where metrics go: a JSON-lines file, TensorBoard event files, and the console.

Only process 0 writes files. JSON lines (`<workdir>/metrics.jsonl`), one object per record:
{"step": int, "split": "train" | "eval", "time": unix seconds, <metric>: float, ...}.
TensorBoard scalars go to `<workdir>/tensorboard/<split>/` as `<metric>`.
"""

import json
import os
import time
from typing import Optional

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
    """Writes scalar metrics of a split at a step to JSON lines and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.workdir = workdir
        self._tb: dict[str, EventFileWriter] = {}
        self._tensorboard = tensorboard and enabled
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None

    def _tb_writer(self, split: str) -> EventFileWriter:
        if split not in self._tb:
            self._tb[split] = EventFileWriter(os.path.join(self.workdir, "tensorboard", split))
        return self._tb[split]

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        now = time.time()
        record = {"step": int(step), "split": split, "time": round(now, 3)}
        record.update({k: float(v) for k, v in scalars.items()})
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        if self._tensorboard:
            summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v))
                                     for k, v in scalars.items()])
            self._tb_writer(split).add_event(Event(wall_time=now, step=int(step), summary=summary))

    def flush(self) -> None:
        for w in self._tb.values():
            w.flush()

    def close(self) -> None:
        for w in self._tb.values():
            w.close()
        if self._jsonl:
            self._jsonl.close()


def read_metrics(workdir: str, split: Optional[str] = None) -> list[dict]:
    """Records of `<workdir>/metrics.jsonl`, optionally of one split, in file order."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if split is None or r["split"] == split]
