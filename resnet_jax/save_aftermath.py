"""Quieting what a failed Orbax save prints after it failed: its orphaned writes' tracebacks and
Orbax's own repeated error logs. The failure itself reaches the user once, as StorageError."""

import logging
import os
import sys

from absl import logging as absl_logging

from resnet_jax.library_errors import is_failed_save_aftermath, is_never_retrieved


class _OrbaxErrorLogs(logging.Filter):
    """Drops Orbax's ERROR logs unless absl's verbosity is INFO or finer (--verbosity=0).

    Orbax logs a failed save from four threads with full tracebacks (300+ lines per save).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        return not (from_orbax and record.levelno >= logging.ERROR
                    and absl_logging.get_verbosity() < absl_logging.INFO)


def quiet_failed_save_aftermath() -> None:
    """Install process-wide hooks that drop the hundreds of tracebacks a failed save's orphaned
    writes print through sys.excepthook, sys.unraisablehook and asyncio's logger, and Orbax's
    ERROR logs (unless --verbosity asks for INFO); everything else passes. Changes the whole
    process: the command-line entry (cli.run) calls it once, before any save can fail."""
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def on_exception(kind, error, tb):
        if not is_failed_save_aftermath(error):
            excepthook(kind, error, tb)

    def on_unraisable(unraisable):
        if not is_failed_save_aftermath(unraisable.exc_value):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
    logging.getLogger("asyncio").addFilter(lambda record: not is_never_retrieved(record))
    logging.getLogger("absl").addFilter(_OrbaxErrorLogs())
