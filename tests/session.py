"""The test session's shared folder (conftest.py makes it and names it in
RESNET_JAX_TESTS_SESSION_DIR before any test module is imported) and what its processes make once
for all of them."""

import fcntl
import os
import shutil
from pathlib import Path

SESSION_VAR = "RESNET_JAX_TESTS_SESSION_DIR"


def once_per_session(name: str, make) -> Path:
    """<session folder>/<name>, made by make(folder) by the first process that asks for it, under a
    lock; the others wait and read it."""
    session = Path(os.environ[SESSION_VAR])
    folder, done = session / name, session / f"{name}.done"
    with open(session / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            make(folder)
            done.touch()
    return folder
