"""How the entry points report errors: a user error (a bad flag value, a missing or malformed input file, bad data under
`--on_bad_sample error`) prints `error: <message>` and exits with status 2; any other exception is a bug and keeps its
full traceback (Python's exit status 1).

    def main(argv: list[str] | None = None) -> int:
        with user_errors():              # the setup phase: parsing, validation, input files, weight sources
            cfg = parse(argv)
            check_inputs(cfg)
        return run(cfg)                   # the work itself: its exceptions are never rewritten

    if __name__ == "__main__":
        sys.exit(run_cli(main))

`user_errors()` wraps only the setup phase, so a ValueError raised by a bug deep in training or evaluation still shows
where it happened. `--debug` on the command line (removed before the entry point parses its flags) or
`DYVA_DEBUG=1` in the environment prints a user error's traceback as well; the status stays 2. argparse's own usage
errors exit 2 already. A run stopped by a preemption signal (`prismatic/util/preemption.py`) raises `Preempted` after
saving its progress: `preempted: <what was saved>` and the run's `--preemption_exit_code` (0 by default).
Under torchrun every rank that hits the error prints it; torchrun then reports the failed child
in its own way (its launcher's ChildFailedError traceback and a summary with the child's exit code 2) and exits 1.

The util layer: imports nothing from the rest of prismatic.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import yaml
from draccus.utils import ParsingError

from prismatic.util.preemption import Preempted

T = TypeVar("T")

DEBUG_FLAG = "--debug"
DEBUG_ENV = "DYVA_DEBUG"
USER_ERROR_STATUS = 2
DRACCUS_LOAD_FAILED = "Failed to load config from"  # draccus' message for a config file its parser rejected

# What the setup phase raises for input the user controls. json.JSONDecodeError, UnicodeDecodeError and the project's
# DatasetError / BenchmarkDataError are ValueErrors; draccus' ParsingError covers its DecodingError (a flag or YAML
# value of the wrong type); yaml.YAMLError a malformed YAML config.
USER_ERROR_TYPES: tuple[type[BaseException], ...] = (
    ValueError,
    json.JSONDecodeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    yaml.YAMLError,
    ParsingError,
)


class UserError(ValueError):
    """An error the user fixes (a flag, a file, the data); its message says what to do. A ValueError, so callers of
    the library functions that raise it (and tests) that catch ValueError keep working."""


@contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Re-raise the user-error exceptions (`USER_ERROR_TYPES`, plus `extra`, e.g. PIL's UnidentifiedImageError) of
    the block as `UserError(str(error))`, chained to the original (whose traceback `--debug` shows)."""
    try:
        yield
    except UserError:
        raise
    except (*USER_ERROR_TYPES, *extra) as error:
        raise UserError(_message(error)) from error


def _message(error: BaseException) -> str:
    """The error's message; for draccus' "Failed to load config from <stream repr>", the parser's own message (YAML's
    names the file, line and column)."""
    if isinstance(error, ParsingError) and str(error).startswith(DRACCUS_LOAD_FAILED) and error.__cause__ is not None:
        return f"could not read the config file: {error.__cause__}"
    return str(error) or type(error).__name__


def debug_requested(argv: Sequence[str]) -> bool:
    """`--debug` among the arguments, or DYVA_DEBUG set to anything but empty/0/false/no."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return DEBUG_FLAG in argv or env not in ("", "0", "false", "no")


def report_user_error(error: UserError, debug: bool) -> None:
    """Print `error: <message>` to stderr; with `debug`, the traceback (and its cause) first."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    print(f"error: {error}", file=sys.stderr, flush=True)


def run_cli(main: Callable[[list[str]], T], argv: Sequence[str] | None = None) -> T:
    """Run an entry point's `main(argv)` (default argv: `sys.argv[1:]`, without `--debug`) and return its result; a
    UserError prints `error: <message>` (and, with `--debug` / DYVA_DEBUG=1, its traceback) and exits with status 2.
    Every other exception propagates unchanged."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    args = [arg for arg in args if arg != DEBUG_FLAG]
    if argv is None:  # code that reads sys.argv itself (a runpy'd script, a help text's prog) must not see --debug
        sys.argv = [sys.argv[0], *args]
    try:
        return main(args)
    except UserError as error:
        report_user_error(error, debug)
        raise SystemExit(USER_ERROR_STATUS) from None
    except Preempted as stop:  # progress is saved: a planned exit with the requeue status, not a failure
        print(f"preempted: {stop}", file=sys.stderr, flush=True)
        raise SystemExit(stop.exit_code) from None
