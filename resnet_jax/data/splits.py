"""Split specs in TFDS syntax resolved to example ranges, and the part of them each process reads.

A spec names examples of a dataset's splits: "train", "train[:45000]", "train[45000:]", "test[:10%]",
"train+validation". It resolves to ranges (split, start, stop) read one after another; positions below
are indices into that concatenation.
"""

import dataclasses
from typing import Mapping, NamedTuple

from resnet_jax.data.base import HostSlice


class Range(NamedTuple):
    """Examples [start, stop) of one split, in the split's stored order."""

    split: str
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class SplitSize:
    """A split's size, in the shape TFDS's split resolution reads (one shard)."""

    num_examples: int

    @property
    def shard_lengths(self) -> list[int]:
        return [self.num_examples]


def resolve(spec: str, splits: Mapping) -> list[Range]:
    """The ranges `spec` names; `splits` maps split name -> an object with num_examples (a TFDS
    SplitDict or SplitSize values). Raises ValueError for an unknown split or a slice out of range."""
    from tensorflow_datasets.core import ReadInstruction

    ranges = []
    for instruction in ReadInstruction.from_spec(spec).to_absolute(splits):
        split = str(instruction.splitname)
        size = splits[split].num_examples
        start = 0 if instruction.from_ is None else instruction.from_
        stop = size if instruction.to is None else instruction.to
        ranges.append(Range(split, start, max(start, stop)))
    return ranges


def count(ranges: list[Range]) -> int:
    return sum(len(r) for r in ranges)


def take(ranges: list[Range], start: int, stop: int) -> list[Range]:
    """The ranges holding positions [start, stop) of the concatenation of `ranges`."""
    out, offset = [], 0
    for r in ranges:
        lo, hi = max(start - offset, 0), min(stop - offset, len(r))
        if lo < hi:
            out.append(Range(r.split, r.start + lo, r.start + hi))
        offset += len(r)
    return out


def to_spec(ranges: list[Range]) -> str:
    """A TFDS split spec reading exactly `ranges`, in order."""
    return "+".join(f"{r.split}[{r.start}:{r.stop}]" for r in ranges)


def train_share(num_examples: int, hosts: HostSlice) -> tuple[int, int]:
    """[start, stop) of this process's part of a train split: an even partition (sizes differ by at
    most one), so every process holds at least steps_per_epoch * local_batch_size examples."""
    i, n = hosts.process_index, hosts.process_count
    return i * num_examples // n, (i + 1) * num_examples // n
