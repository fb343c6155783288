"""The exception types of resnet_jax, in one module so that every layer can raise them without
importing another.

`UserError` is bad input the user can fix (a config field, a flag, a dataset that is not prepared,
an evaluation request): the command-line entry points print its message as one line and exit 2.
Anything else is an internal error and keeps its traceback.
"""


class UserError(Exception):
    """Input the user can fix; the message names the field or flag and what is allowed."""


class ConfigError(UserError, ValueError):
    """A config field has a value that is not allowed; the message names the field."""


class FlagError(UserError, ValueError):
    """A command-line flag has a value that is not allowed; the message names the flag."""


class EvalError(UserError):
    """An evaluation request cannot be carried out; the message says why and what to do."""


class DamagedCheckpointError(RuntimeError):
    """A checkpoint's files are missing, truncated, altered or unreadable; names the file."""

    def __init__(self, step: int, path: str, reason: str):
        self.step, self.path, self.reason = step, path, reason
        super().__init__(f"checkpoint step {step} is damaged: {path}: {reason}")


class UnverifiedCheckpointError(RuntimeError):
    """A checkpoint's integrity record is missing or unreadable (e.g. the save was cut short), so
    its files cannot be checked; names the step, the record and the reason."""

    def __init__(self, step: int, path, reason: str):
        self.step, self.path, self.reason = step, path, reason
        super().__init__(f"checkpoint step {step} is unverified: {path}: {reason}")


class InterruptedCheckpointError(UnverifiedCheckpointError):
    """A checkpoint has no integrity record: its save was cut short after Orbax committed it and
    before the record was written (or older code wrote it)."""


class NoGoodCheckpointError(UserError):
    """A run has checkpoints but none of them can be resumed from; says what the user may do."""


class IncompatibleCheckpointError(ValueError):
    """The saved arrays do not fit the target state; names the first differing array and shapes."""


class StorageError(UserError):
    """Writing a run's files failed (disk full, no permission, bucket unreachable); names the path
    and the cause."""

    def __init__(self, path, cause: str):
        self.path, self.cause = path, cause
        super().__init__(f"cannot write {path}: {cause}")


class NonFiniteLossError(RuntimeError):
    """The loss, gradients, parameters or BN statistics became NaN or Inf; names the step, the
    non-finite quantities and the last good checkpoint (or that there is none)."""


def innermost(error: BaseException) -> BaseException:
    """The end of `error`'s chain of causes (raise ... from, or raised while handling)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    return error
