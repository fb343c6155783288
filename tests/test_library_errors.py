"""The library wordings that resnet_jax/library_errors.py relies on, each triggered for real in the
installed library: a test here fails when an upgrade changes one."""

import asyncio
import gc
import importlib
import logging
import subprocess
import sys

import pytest
import tensorstore as ts
from absl import flags
from ml_collections import ConfigDict, config_flags

from resnet_jax import library_errors, storage
from train_cli import REPO, env_with_devices


def test_jax_finding_no_cluster_is_recognised():
    """jax.distributed.initialize must run before the backend starts: in a fresh process."""
    script = ("import jax\nfrom resnet_jax.library_errors import is_no_cluster\n"
              "try:\n    jax.distributed.initialize()\nexcept ValueError as e:\n"
              "    print('no cluster' if is_no_cluster(e) else f'unrecognised: {e}')\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, cwd=REPO, env=env_with_devices(1))
    assert result.stdout.strip() == "no cluster", result.stdout + result.stderr[-2000:]


def _override_error(monkeypatch, override):
    """The error ml_collections raises for `override` while defining --config (it applies the
    overrides in sys.argv there)."""
    config = ConfigDict({"schedule": {"base_lr": 0.1}, "seed": 0})
    monkeypatch.setattr(sys, "argv", ["prog", override])
    with pytest.raises((AttributeError, KeyError)) as err:
        config_flags.DEFINE_config_dict("config", config, flag_values=flags.FlagValues(),
                                        lock_config=True)
    return err.value


@pytest.mark.parametrize("override, expected", [
    ("--config.schedule.base_lrr=0.2", ("base_lrr", "base_lr")),
    ("--config.sched.base_lr=0.2", ("sched", "schedule")),
    ("--config.zzzz=1", ("zzzz", None)),
])
def test_ml_collections_unknown_override_gives_the_name_and_suggestion(monkeypatch, override,
                                                                        expected):
    error = _override_error(monkeypatch, override)
    assert library_errors.unknown_config_field(error) == expected


def test_ml_collections_config_file_errors_are_told_from_absl_own(tmp_path, monkeypatch):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    raise ValueError('a bug in the config file')\n")
    monkeypatch.setattr(sys, "argv", ["prog"])
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values)
    flags.DEFINE_integer("n", 1, "an int", flag_values=flag_values)
    with pytest.raises(flags.Error) as from_file:
        flag_values(["prog", f"--config={broken}"])
    with pytest.raises(flags.Error) as from_absl:
        flag_values(["prog", "--n=x"])
    assert library_errors.raised_in_config_file(from_file.value)
    assert not library_errors.raised_in_config_file(from_absl.value)


def test_a_closed_asyncio_loop_is_aftermath():
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError) as err:
        loop.call_soon(print)
    assert library_errors.is_failed_save_aftermath(err.value)
    assert not library_errors.is_failed_save_aftermath(RuntimeError("something else"))


def test_importing_during_teardown_is_aftermath(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", None)  # what interpreter teardown leaves
    with pytest.raises(ImportError) as err:
        importlib.import_module("resnet_jax_never_imported")
    monkeypatch.undo()
    assert library_errors.is_failed_save_aftermath(err.value)
    assert not library_errors.is_failed_save_aftermath(ImportError("No module named 'x'"))


def test_asyncio_never_retrieved_log_is_recognised(caplog):
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(ValueError("lost"))
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        del future
        gc.collect()
    loop.close()
    (record,) = [r for r in caplog.records if r.name == "asyncio"]
    assert library_errors.is_never_retrieved(record)


def test_tensorstore_messages_come_down_to_their_cause(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    path = tmp_path / "file" / ("d" * 150) / ("e" * 150)
    with pytest.raises(ValueError) as err:
        ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)}},
                create=True, dtype=ts.float32, shape=[4]).result()
    assert "[os_error_code=" in str(err.value)
    assert storage.cause(err.value) == "Not a directory"
