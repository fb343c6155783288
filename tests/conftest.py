"""Settings of the test process itself, made before any test module imports JAX, gcsfs or
google-auth (all read them at import), and inherited by the processes the tests start.

- Nothing a test runs may look beyond 127.0.0.1. Without these settings gcsfs asks Google for a
  bucket's type, and google-auth probes the GCE metadata server, when a test reads a gs:// path of
  the local emulator (tests/gcs_emulator.py sets the emulator's own address).
- One JAX persistent compilation cache for the whole session, shared by the test process and every
  train.py / eval.py it starts: the suite compiles the same few steps in dozens of processes, and
  a compiled step loaded from the cache is the same executable as one compiled afresh. A
  JAX_COMPILATION_CACHE_DIR set by the user is used instead (and kept).
"""

import os
import shutil
import tempfile

import pytest

os.environ.update({
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "127.0.0.1:1",
    "GCE_METADATA_IP": "127.0.0.1:1",
})

_CACHE = None if "JAX_COMPILATION_CACHE_DIR" in os.environ else tempfile.mkdtemp(
    prefix="resnet-jax-tests-xla-cache-")
if _CACHE:
    os.environ.update({
        "JAX_COMPILATION_CACHE_DIR": _CACHE,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",  # default 1 s: most steps here are less
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
    })


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """The tiny run (train_cli.TINY) through train.py, uninterrupted, on one device, run once for
    the session: (workdir, ((params, batch_stats) as numpy, final step)). Tests compare their
    interrupted, resumed or relocated runs with it, or only read it."""
    from train_cli import final_state, run_train

    workdir = tmp_path_factory.mktemp("reference")
    run_train(workdir)
    return workdir, final_state(workdir)


def pytest_sessionfinish(session, exitstatus):
    if _CACHE:
        shutil.rmtree(_CACHE, ignore_errors=True)
