"""Where metrics go: JSON lines and TensorBoard event files, through resnet_jax.storage.

Only process 0 writes files. JSON lines, one object per record:
{"step": int, "split": "train" | "eval" | <eval.py name>, "time": unix seconds, <metric>: float, ...}.
In a local workdir every writer appends to `<workdir>/metrics.jsonl`. An object store (gs://) has no
append, so each writer session (a training run, its resumption, an eval.py call) owns one object,
`<workdir>/metrics.<UTC start time>.<host>.<pid>.jsonl`, rewritten whole at each record: no session
can overwrite another's lines, and a training run and eval.py --watch can write at the same time.
`read_metrics` reads both layouts, sessions in start-time order.

TensorBoard scalars go to `<workdir>/tensorboard/<split>/events.out.tfevents.*` (one file per
writer session), framed by tensorboard's own pure-Python RecordWriter (TensorFlow is not imported).
"""

import json
import time
from typing import Optional

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter

from resnet_jax import storage

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
    """Writes scalar metrics of a split at a step to JSON lines and TensorBoard (process 0 only).

    Raises StorageError (naming the file) when a write fails.
    """

    def __init__(self, workdir: storage.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.workdir = storage.path(workdir)
        self._session = storage.session_name()
        self._tb: dict[str, RecordWriter] = {}
        self._tensorboard = tensorboard and enabled
        self._jsonl: Optional[storage.GrowingFile] = None
        if enabled:
            name = (f"metrics.{self._session}.jsonl" if storage.is_object_store(self.workdir)
                    else METRICS_FILE)
            self._jsonl = storage.GrowingFile(self.workdir / name)

    def _tb_writer(self, split: str) -> RecordWriter:
        if split not in self._tb:
            events = self.workdir / "tensorboard" / split / f"events.out.tfevents.{self._session}"
            writer = RecordWriter(storage.GrowingFile(events))
            writer.write(Event(wall_time=time.time(), file_version="brain.Event:2")
                         .SerializeToString())
            self._tb[split] = writer
        return self._tb[split]

    def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        now = time.time()
        record = {"step": int(step), "split": split, "time": round(now, 3)}
        record.update({k: float(v) for k, v in scalars.items()})
        self._jsonl.write((json.dumps(record) + "\n").encode())
        if self._tensorboard:
            summary = Summary(value=[Summary.Value(tag=k, simple_value=float(v))
                                     for k, v in scalars.items()])
            self._tb_writer(split).write(
                Event(wall_time=now, step=int(step), summary=summary).SerializeToString())

    def close(self) -> None:
        for w in self._tb.values():
            w.close()
        if self._jsonl:
            self._jsonl.close()


def read_metrics(workdir: storage.PathLike, split: Optional[str] = None) -> list[dict]:
    """Records of the workdir's metrics files (metrics.jsonl, then the per-session objects in
    start-time order), optionally of one split, in file order."""
    folder = storage.path(workdir)
    files = [folder / METRICS_FILE] + sorted(folder.glob("metrics.*.jsonl"))
    records = [json.loads(line) for f in files if f.exists()
               for line in f.read_text().splitlines() if line.strip()]
    return [r for r in records if split is None or r["split"] == split]
