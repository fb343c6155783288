"""Integrity records: `<step>/checksums.json` maps every file under a checkpoint's `state/` and
`meta/` to [size in bytes, SHA-256]; writing one, and checking a step's files against it.

A checkpoint is
- good (VERIFIED): every file matches its record;
- damaged (DamagedCheckpointError): a recorded file is missing, of another size or altered;
- interrupted (InterruptedCheckpointError, an UnverifiedCheckpointError): it has no record, because
  its save was cut short between Orbax's commit and the record (a kill, a full disk), or older code
  wrote it;
- unverified (UnverifiedCheckpointError): its record is unreadable.
"""

import hashlib
import json

from resnet_jax import storage
from resnet_jax.errors import (DamagedCheckpointError, InterruptedCheckpointError, StorageError,
                               UnverifiedCheckpointError)

CHECKSUMS = "checksums.json"
CHECKSUMMED_ITEMS = ("state", "meta")
VERIFIED = "sha256"
_CHUNK = 1 << 22


def digest(path) -> list:
    """[size in bytes, SHA-256 hex digest] of the file at `path` (an epath.Path)."""
    sha, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return [size, sha.hexdigest()]


def file_checksums(step_dir: storage.PathLike) -> dict[str, list]:
    """{path relative to `step_dir`: [size, sha256]} for every file under its state/ and meta/."""
    step_dir = storage.path(step_dir)
    out = {}
    for item in CHECKSUMMED_ITEMS:
        for file in storage.files_under(step_dir / item):
            out[str(file.relative_to(step_dir))] = digest(file)
    return dict(sorted(out.items()))


def write_record(step_dir: storage.PathLike) -> None:
    """Write `step_dir`'s integrity record from its files as they are now. Raises StorageError
    naming the record and the cause."""
    record = storage.path(step_dir) / CHECKSUMS
    try:
        checksums = file_checksums(step_dir)
    except Exception as e:  # noqa: BLE001 (reading the files back failed: OS and gcsfs errors)
        raise StorageError(record, storage.cause(e)) from e
    storage.write_atomic(record, json.dumps(checksums, indent=0))


def verify(step: int, step_dir, allow_unverified: bool = False) -> str:
    """VERIFIED when every file of checkpoint `step` (in `step_dir`) matches its integrity record.

    Raises DamagedCheckpointError naming the first file that is missing, of the wrong size or
    altered; InterruptedCheckpointError when the record is missing and UnverifiedCheckpointError
    when it is unreadable, unless `allow_unverified` (then returns "unverified: <reason>").
    """
    listing = step_dir / CHECKSUMS
    if not step_dir.is_dir():
        raise DamagedCheckpointError(step, step_dir, "the step folder is missing")
    try:
        expected = json.loads(listing.read_text())
        if not isinstance(expected, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        problem = InterruptedCheckpointError(
            step, listing, "no integrity record: the save was cut short (killed, disk full, "
            "storage unreachable) or written by older code")
    except Exception as e:  # noqa: BLE001 (OS, gcsfs and JSON errors)
        problem = UnverifiedCheckpointError(step, listing,
                                            f"unreadable integrity record ({storage.cause(e)})")
    else:
        compare(step, step_dir, expected)
        return VERIFIED
    if not allow_unverified:
        raise problem
    return f"unverified: {problem.reason}"


def compare(step: int, step_dir, expected: dict) -> None:
    """Raise DamagedCheckpointError for the first file of `expected` ({relative path: [size,
    sha256]}) that is missing under `step_dir`, of another size or altered."""
    for rel, (size, sha) in expected.items():
        path = step_dir / rel
        if not path.exists():
            raise DamagedCheckpointError(step, path, "the file is missing")
        found_size, found_sha = digest(path)
        if found_size != size:
            raise DamagedCheckpointError(step, path, f"{found_size} bytes, {size} expected "
                                         "(truncated or overwritten)")
        if found_sha != sha:
            raise DamagedCheckpointError(step, path, "its contents differ from the checksum "
                                         "written at save time")
