"""Where metrics go: a JSON-lines file, TensorBoard event files, and the console.

Only process 0 writes files. JSON lines (`<workdir>/metrics.jsonl`), one object per record:
{"step": int, "split": "train" | "eval", "time": unix seconds, <metric>: float, ...}.
TensorBoard scalars go to `<workdir>/tensorboard/<split>/` as `<metric>`.
"""

import json
import os
import socket
import struct
import time
from typing import BinaryIO, Optional

from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC32C_TABLE = _crc32c_table()


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli) of `data`."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class EventFile:
    """A TensorBoard event file written directly as TFRecords, without importing TensorFlow.

    Record framing: uint64 length, masked CRC-32C of the length, the serialised Event, masked CRC-32C
    of the Event (all little-endian).
    """

    def __init__(self, directory: str):
        os.makedirs(directory, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._file: BinaryIO = open(os.path.join(directory, name), "wb")
        self.add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add_event(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", _masked_crc32c(header)) + data
                         + struct.pack("<I", _masked_crc32c(data)))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MetricWriter:
    """Writes scalar metrics of a split at a step to JSON lines and TensorBoard (process 0 only)."""

    def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.workdir = workdir
        self._tb: dict[str, EventFile] = {}
        self._tensorboard = tensorboard and enabled
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None

    def _tb_writer(self, split: str) -> EventFile:
        if split not in self._tb:
            self._tb[split] = EventFile(os.path.join(self.workdir, "tensorboard", split))
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
            writer = self._tb_writer(split)
            writer.add_event(Event(wall_time=now, step=int(step), summary=summary))
            writer.flush()

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
