"""Settings of the test process itself, made before any test module imports JAX, gcsfs or
google-auth (all read them at import), and inherited by the processes the tests start.

- Nothing a test runs may look beyond 127.0.0.1. Without these settings gcsfs asks Google for a
  bucket's type, and google-auth probes the GCE metadata server, when a test reads a gs:// path of
  the local emulator (tests/gcs_emulator.py sets the emulator's own address).
- One session folder, made by the first pytest process (the xdist controller, which starts the
  workers after loading this file, or a lone pytest) and named in RESNET_JAX_TESTS_SESSION_DIR for
  every process after it: the workers and every train.py / eval.py the tests start. It holds
  - one JAX persistent compilation cache: the suite compiles the same few steps in dozens of
    processes, and a compiled step loaded from the cache is the same executable as one compiled
    afresh. A JAX_COMPILATION_CACHE_DIR set by the user is used instead (and kept);
  - the reference runs (`reference_run`, `few_steps_run`) and the runs that test_eval.py and
    test_checkpoint_faults.py read or copy, each trained by the first worker that asks for it,
    and the models' abstract traces (model_traces.py), all made through session.once_per_session.
  The process that made the folder removes it at the end.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from session import SESSION_VAR, once_per_session

os.environ.update({
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    "NO_GCE_CHECK": "true",
    "GCE_METADATA_HOST": "127.0.0.1:1",
    "GCE_METADATA_IP": "127.0.0.1:1",
})

_OWNS_SESSION = SESSION_VAR not in os.environ
if _OWNS_SESSION:
    os.environ[SESSION_VAR] = tempfile.mkdtemp(prefix="resnet-jax-tests-")
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ.update({
            "JAX_COMPILATION_CACHE_DIR": os.path.join(os.environ[SESSION_VAR], "xla-cache"),
            # default 1 s: most steps here compile in less
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
        })
SESSION = Path(os.environ[SESSION_VAR])


@pytest.fixture(scope="session")
def reference_run():
    """The tiny run (train_cli.TINY) through train.py, uninterrupted, on one device, trained once
    for the whole session: (workdir, ((params, batch_stats) as numpy, final step)). Tests compare
    their interrupted, resumed or relocated runs with it, or only read it; none writes into it."""
    from train_cli import final_state, run_train

    workdir = once_per_session("reference", run_train)
    return workdir, final_state(workdir)


@pytest.fixture(scope="session")
def few_steps_run():
    """train_cli.FEW_STEPS on one device, in the process that first asks, once for the session:
    (params, batch_stats) as numpy."""
    import jax

    from resnet_jax.training import train_and_evaluate
    from train_cli import FEW_STEPS, final_state, tiny_config

    workdir = once_per_session("few_steps", lambda folder: train_and_evaluate(
        tiny_config(FEW_STEPS), str(folder), devices=jax.devices()[:1]))
    return final_state(workdir)[0]


def pytest_sessionfinish(session, exitstatus):
    if _OWNS_SESSION:
        shutil.rmtree(SESSION, ignore_errors=True)


# The longest tests (25-60 s each on 2 loaded cores; most others take under 10 s) start first:
# pytest-xdist hands tests out in collection order, so a long test collected last keeps one worker
# busy after the other has finished. A name that no longer exists is simply not matched.
LONGEST_FIRST = (
    "test_training.py::test_embedded_digits_run_reaches_97_percent_and_accounts_for_its_time",
    "test_accelerator_report.py::test_smoke_report_runs_every_section_without_tensorflow",
    "test_storage.py::test_gs_run_outlives_an_outage_and_a_kill_and_is_evaluated_and_logged",
    "test_training.py::test_sigterm_then_sigkill_then_resume_is_bitwise_equal",
    "test_training.py::test_two_processes_match_one_and_stop_together_on_sigterm",
    "test_training.py::test_eight_devices_match_one_device",
    "test_on_device.py::test_k_steps_in_one_dispatch_equal_k_dispatches_of_one_step",
    "test_experiments.py::test_tiny_seeded_sweep_then_plot_and_table",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(f"{item.path.name}::{item.originalname}", len(rank)))
