"""Every file a run keeps goes through etils.epath, so local folders, NFS and gs:// buckets work alike.

gs:// goes through fsspec's gcsfs, never through TensorFlow's GCS client: this module sets
EPATH_USE_TF=false unless the user set it (it must be set before epath first opens a gs:// path; it
caches the choice). One client then serves training, eval.py and the tests, and it honours
STORAGE_EMULATOR_HOST, which TensorFlow's client does not. Credentials are Google's
application-default credentials in both cases. Orbax writes its arrays through TensorStore,
which reads the same credentials. gcsfs's directory-listing cache is off (see below).

Object stores have neither append nor atomic rename, but an object upload is all-or-nothing:
`write_atomic` uploads objects directly and writes local files to a temporary name then renames.
`GrowingFile` is a file that one writer session only appends to.
"""

import os
import shutil
import socket
import time
from typing import Union

os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402 (after the EPATH_USE_TF default)

try:  # fsspec comes with gcsfs; without it there is no gs:// to configure
    import fsspec
except ImportError:
    fsspec = None
if fsspec is not None:
    # gcsfs caches directory listings forever by default, so one process would never see the
    # checkpoints another writes (eval.py --watch, resuming); list afresh (a user's setting wins).
    fsspec.config.conf.setdefault("gcs", {}).setdefault("use_listings_cache", False)

from resnet_jax.errors import StorageError, innermost  # noqa: E402
from resnet_jax.library_errors import tensorstore_cause  # noqa: E402

PathLike = Union[str, os.PathLike]


def is_object_store(path: PathLike) -> bool:
    """True for URIs such as gs://bucket/run (no append, no atomic rename)."""
    return "://" in os.fspath(path)


def path(p: PathLike) -> epath.Path:
    """`p` as an epath.Path; local paths made absolute (Orbax needs absolute paths)."""
    return epath.Path(p) if is_object_store(p) else epath.Path(os.path.abspath(os.fspath(p)))


def cause(error: BaseException) -> str:
    """The innermost cause of `error` in one line: "[Errno 28] No space left on device", or for
    TensorStore's messages their innermost clause (library_errors.tensorstore_cause)."""
    error = innermost(error)
    text = tensorstore_cause(str(error).strip().split("\n")[0])
    if not text or "://" in text.split(" ")[0]:  # aiohttp and gcsfs errors may be a bare URL
        text = f"{type(error).__name__} {text}".strip()
    return text[:300]


def write_atomic(target: PathLike, data: Union[str, bytes]) -> None:
    """Write the whole of `data` to `target`, which then holds the old or the new contents, never a
    part. Raises StorageError naming the path and the cause."""
    target = path(target)
    mode = "w" if isinstance(data, str) else "wb"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if is_object_store(target):
            with target.open(mode) as f:
                f.write(data)
            return
        tmp = target.parent / f".{target.name}.tmp.{os.getpid()}"
        with tmp.open(mode) as f:
            f.write(data)
        tmp.replace(target)
    except Exception as e:  # noqa: BLE001 (gcsfs and aiohttp errors are not all OSErrors)
        raise StorageError(target, cause(e)) from e


def files_under(folder: PathLike) -> list[epath.Path]:
    """Every file below `folder`, recursively. (epath's walk() yields gs:// roots without their
    scheme, which then name local paths.)"""
    out = []
    for child in path(folder).iterdir():
        if child.is_dir():
            out.extend(files_under(child))
        else:
            out.append(child)
    return out


def copy_folder(source: PathLike, target: PathLike) -> None:
    """Copy every file under `source` to the same path relative to `target` (either may be local or
    gs://). Raises StorageError naming the file and the cause."""
    source, target = path(source), path(target)
    for file in files_under(source):
        copy = target / file.relative_to(source)
        try:
            copy.parent.mkdir(parents=True, exist_ok=True)
            with file.open("rb") as reading, copy.open("wb") as writing:
                shutil.copyfileobj(reading, writing)
        except Exception as e:  # noqa: BLE001 (gcsfs and aiohttp errors are not all OSErrors)
            raise StorageError(copy, cause(e)) from e


def session_name() -> str:
    """'<UTC time>.<host>.<pid>': unique to one writer process, sorting by start time."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{socket.gethostname()}.{os.getpid()}"


class GrowingFile:
    """A file that one writer session only appends to, readable while it grows.

    Local files are opened for appending and each write is flushed, so other writers' lines
    (O_APPEND) are kept. An object cannot be appended to: the session keeps what it wrote and
    uploads the whole object again at each write, so it must own the object (one per session).
    Errors raise StorageError naming the path.
    """

    def __init__(self, target: PathLike):
        self.path = path(target)
        self._remote = is_object_store(self.path)
        self._written = bytearray()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = None if self._remote else self.path.open("ab")
        except Exception as e:  # noqa: BLE001 (gcsfs and aiohttp errors are not all OSErrors)
            raise StorageError(self.path, cause(e)) from e

    def write(self, data: bytes) -> None:
        try:
            if self._remote:
                self._written += data
                with self.path.open("wb") as f:
                    f.write(bytes(self._written))
            else:
                self._file.write(data)
                self._file.flush()
        except Exception as e:  # noqa: BLE001 (gcsfs and aiohttp errors are not all OSErrors)
            raise StorageError(self.path, cause(e)) from e

    def flush(self) -> None:
        """Every write is already flushed (RecordWriter calls this)."""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
