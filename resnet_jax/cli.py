"""Command-line entry points: absl flags, and errors a researcher can act on.

`run(main)` stands in for `absl.app.run(main)` in every command. A bad flag, a config override that
names no field (with ml_collections' "did you mean"), a config file that cannot be loaded, and any
`UserError` raised by `main` print `<program>: error: <message>` on stderr and exit with status 2,
without a traceback. Any other exception is an internal error and keeps its traceback.
"""

import os
import re
import sys
from typing import Callable, NoReturn, Optional

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import library_errors
from resnet_jax.errors import UserError, innermost
from resnet_jax.save_aftermath import quiet_failed_save_aftermath

USAGE_EXIT_CODE = 2
# An override error that ml_collections raised while defining --config (it applies the overrides in
# sys.argv to the default file right there); parse_flags reports it.
_definition_errors: list[BaseException] = []


def define_config_flag(default: str, help_text: str) -> None:
    """--config: an ml_collections config file (`file.py[:arg]`), locked so that an override naming
    no field is an error; `default` is used when --config is not given."""
    try:
        config_flags.DEFINE_config_file("config", default, help_text, lock_config=True)
    except (AttributeError, KeyError) as e:
        _definition_errors.append(e)


def program_name() -> str:
    """'train.py' for a script, 'python -m resnet_jax.benchmark' for a module run with -m."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return f"python -m {spec.name}" if spec else os.path.basename(sys.argv[0])


def fail(message: str) -> NoReturn:
    """Print `<program>: error: <message>` on stderr and exit with status 2.

    The process ends at once (os._exit, after flushing stdout and stderr): a UserError reaches
    here after the command's own cleanup ran, and the interpreter's teardown is what library
    threads still running then have crashed (TensorStore's writes orphaned by a save that failed
    on an unreachable bucket: exit -11 or a "Fatal Python error" instead of this line's status).
    This is the one mechanism against that crash: skipping the teardown beats any attempt to
    settle those writes before it (an atexit hook would never run here anyway).
    """
    print(f"{program_name()}: error: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(USAGE_EXIT_CODE)


def _last_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[-1].strip()


def _unknown_override(argv: list[str], error: BaseException) -> str:
    """The message for a --config.<field> override that names no field (ml_collections'
    AttributeError or KeyError), naming the override and the close field if there is one."""
    name, suggestion = library_errors.unknown_config_field(error)
    flag = next((a.split("=")[0] for a in argv
                 if re.match(rf"--config\.(.+\.)?{re.escape(name)}(=|$)", a)), "--config")
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return f"{flag}: the config has no field {name!r}{hint}"


def parse_flags(argv: list[str], known_only: bool = False) -> list[str]:
    """absl's flag parsing, with every user error reported by `fail`. A --config file is loaded
    here too (ml_collections defers the error of one that cannot be loaded to its first use). With
    `known_only`, flags this program does not define are left in the returned arguments."""
    if _definition_errors:
        fail(_unknown_override(argv, _definition_errors[0]))
    try:
        rest = flags.FLAGS(argv, known_only=known_only)
        if "config" in flags.FLAGS and flags.FLAGS.config is not None:
            flags.FLAGS.config.keys()  # raises the load error of a file that failed
        return rest
    except flags.Error as e:
        if not library_errors.raised_in_config_file(e):  # absl's own: an unknown flag, a bad value
            fail(_last_line(e))
        if isinstance(innermost(e), UserError):  # a config file rejecting its argument
            fail(_last_line(innermost(e)))
        raise  # anything else raised inside a config file is a bug there: keep its traceback
    except (AttributeError, KeyError) as e:
        fail(_unknown_override(argv, e))
    except OSError as e:
        fail(f"--config: {_last_line(innermost(e))}")


def run(main: Callable[[list[str]], Optional[int]], arguments: Optional[str] = None,
        pass_through: Optional[str] = None) -> None:
    """absl.app.run(main), with flag errors and UserErrors from `main` as one line and exit 2;
    absl logs warnings and errors unless --verbosity says otherwise, and a failed checkpoint
    save's aftermath is quieted (save_aftermath.py). `main` receives argv: the
    program, then the positional arguments if the command takes some (`arguments` names them, for
    the message), then the flags starting with `pass_through` (which it forwards elsewhere)."""

    def guarded(argv):
        rest = argv[1:]
        stray = [a for a in rest if not ((pass_through and a.startswith(pass_through))
                                         or (arguments and not a.startswith("-")))]
        if stray:
            takes = f"; it takes {arguments} and flags" if arguments else ""
            fail(f"unexpected arguments {stray}{takes} (flags take the form --name=value)")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # JAX and Orbax log routine steps at INFO
        quiet_failed_save_aftermath()
        try:
            return main(argv)
        except UserError as e:
            fail(str(e))

    app.run(guarded, flags_parser=lambda argv: parse_flags(argv, known_only=bool(pass_through)))
