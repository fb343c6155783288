"""Every place where resnet_jax recognises a library's error by its wording, because the library
raises no type of its own for it. Each wording relied on is listed here, and tests/
test_library_errors.py triggers the real error of the installed library, so that an upgrade that
changes one fails that test instead of silently changing what users see:

- JAX, `jax.distributed.initialize()` finding no cluster: ValueError "coordinator_address should be
  defined."
- ml_collections, a --config.<field> override naming no field: AttributeError or KeyError whose text
  is the quoted name, then 'Did you mean "<close field>" instead of "<name>"?' when one is close.
- ml_collections, a config file raising TypeError or ValueError: re-raised as the same type with
  the text "Error whilst parsing config file:" and the traceback (absl's flag error then holds it).
- asyncio, a loop closed under pending callbacks: RuntimeError "Event loop is closed".
- CPython's import system during interpreter teardown: ImportError "sys.meta_path is None, Python is
  likely shutting down".
- asyncio's default exception handler, for a future garbage-collected with its exception unread:
  a log record starting "Future exception was never retrieved" (or "Task ...").
- TensorStore: a ValueError whose text ends in payload annotations such as
  "[os_error_code='28']", "[source locations='...']", "[tensorstore_spec='...']", and whose
  message names each nested file before the innermost cause ('...file "<path>": <cause>').
"""

import logging
import re
from typing import Optional

_NO_CLUSTER = "coordinator_address should be defined"
_DID_YOU_MEAN = re.compile(r'Did you mean "([^"]+)" instead of "([^"]+)"')
_QUOTED_NAME = re.compile(r"'([A-Za-z_]\w*)'")
_CONFIG_FILE_RAISED = "Error whilst parsing config file"
_LOOP_CLOSED = "Event loop is closed"
_SHUTTING_DOWN = "Python is likely shutting down"
_NEVER_RETRIEVED = "exception was never retrieved"
_TENSORSTORE_ANNOTATION = re.compile(r"\s*\[[a-z_ ]+=('(?:[^'\\]|\\.)*'|[^\]]*)\]")
_LONG = 300


def is_no_cluster(error: ValueError) -> bool:
    """True for JAX's error of `jax.distributed.initialize()` when it finds no cluster."""
    return _NO_CLUSTER in str(error)


def unknown_config_field(error: BaseException) -> tuple[str, Optional[str]]:
    """(the field name, ml_collections' suggestion or None) of an override naming no field."""
    text = str(error).replace("\\'", "'").replace("\\n", " ")
    suggestion = _DID_YOU_MEAN.search(text)
    if suggestion:
        return suggestion.group(2), suggestion.group(1)
    quoted = _QUOTED_NAME.search(text)
    return (quoted.group(1) if quoted else text), None


def raised_in_config_file(error: BaseException) -> bool:
    """True when an absl flag error carries an exception that a config file's code raised (as
    opposed to absl's own: an unknown flag, a value of the wrong type)."""
    return _CONFIG_FILE_RAISED in str(error)


def is_failed_save_aftermath(error: BaseException) -> bool:
    """Errors of the writes that a failed Orbax save leaves behind: its asyncio loop is closed
    when the first write fails, and the other writes' callbacks fail when they finish or at exit."""
    return (isinstance(error, RuntimeError) and str(error) == _LOOP_CLOSED) or (
        isinstance(error, ImportError) and _SHUTTING_DOWN in str(error))


def is_never_retrieved(record: logging.LogRecord) -> bool:
    """True for asyncio's log of a future or task whose exception nobody read."""
    return _NEVER_RETRIEVED in str(record.msg)


def tensorstore_cause(text: str) -> str:
    """`text` without TensorStore's payload annotations; of a long message (which names every
    nested file), its last clause, e.g. "Failed to write 217737 bytes to file 5: No space left on
    device" or "Not a directory"."""
    text = _TENSORSTORE_ANNOTATION.sub("", text)
    if len(text) > _LONG and '": ' in text:
        text = text.rsplit('": ', 1)[1]
    return text
