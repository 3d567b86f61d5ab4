"""One `error: ...` line on stderr and exit status 2 for every known error of every CLI.

Apply it to a command's entry point (one import, one line); nothing else changes:

    from cache.cli_errors import cli_main

    @cli_main
    def main(argv: list[str] | None = None) -> int:
        ...

Known errors are the project's own exception classes (any class defined in `cache`, `extract`
or `mammosae_jax`), ValueError (validation), OSError (files: h5py's errors on a damaged file,
a full disk, a missing folder) and those given as `@cli_main(extra=(SomeError,))`. They print
`error: <message>` and exit 2. Ctrl-C prints `error: interrupted` and exits 130. Anything else
is a bug: its traceback is shown as usual. `--debug` anywhere on the command line (or
MAMMOSAE_DEBUG=1) shows the traceback of known errors too; the flag is removed before the
command parses its arguments. A command's own `except` blocks call `print_error(e)` so that
`--debug` shows their tracebacks as well. After a failed HDF5 write (disk full) the HDF5 library
crashes when Python shuts down, so the wrapper then ends the process at once with os._exit
(after flushing stdout/stderr; the lock files are released by the kernel).
Standard library only, so `extract/` and `mammosae_jax/` share it.
"""
from __future__ import annotations

import functools
import os
import sys
import traceback
from typing import Any, Callable, Sequence

PROJECT_PACKAGES = ("cache", "extract", "mammosae_jax")
KNOWN: tuple[type[BaseException], ...] = (ValueError, OSError)
DEBUG_FLAG = "--debug"


def is_known(exc: BaseException, extra: tuple[type[BaseException], ...] = ()) -> bool:
    """True for the errors a user can fix from the message (see the module docstring)."""
    if isinstance(exc, KNOWN + extra):
        return True
    return any(cls.__module__.split(".")[0] in PROJECT_PACKAGES for cls in type(exc).__mro__
               if issubclass(cls, Exception) and cls is not Exception)


_debug = [False]  # set by cli_main for the command it runs
_held: list[Any] = []  # what `hold_until_return` was given while a command ran: released when it returns


def hold_until_return(resource: Any) -> Any:
    """Release `resource` (anything with `release()`, e.g. an output lock) when the running command returns.

    Deterministic, unlike a local variable's finaliser: a traceback kept by an exception caught
    inside the command would keep that local, and so the lock, alive until the next garbage
    collection, and a second command run in the same process (the demo) would find it held.
    """
    _held.append(resource)
    return resource


def _release_held(since: int) -> None:
    while len(_held) > since:
        _held.pop().release()


def error_line(exc: BaseException) -> str:
    """`error: <message>` on one line (the message's lines joined; the class name if it is empty)."""
    text = " ".join(str(exc).strip().splitlines()) if str(exc).strip() else type(exc).__name__
    if isinstance(exc, KeyError) and exc.args:
        text = f"missing key {exc.args[0]!r}"
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return f"error: {text}"


def print_error(exc: BaseException) -> None:
    """Print `error: <message>` to stderr, after the traceback under --debug (for a CLI's own handlers)."""
    if _debug[0]:
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(error_line(exc), file=sys.stderr)


def _exit_now_if_hdf5_failed(code: Any) -> None:
    """After a failed HDF5 write the library segfaults at interpreter exit: end the process here instead."""
    writer = sys.modules.get("cache.write_support")
    if writer is not None and writer.hdf5_write_failed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 2)


def _split_debug(argv: Sequence[str] | None) -> tuple[list[str] | None, bool]:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in args or os.environ.get("MAMMOSAE_DEBUG", "") not in ("", "0")
    if DEBUG_FLAG not in args:
        return (None if argv is None else args), debug
    return [a for a in args if a != DEBUG_FLAG], debug


def cli_main(func: Callable[..., Any] | None = None, *, extra: tuple[type[BaseException], ...] = ()):
    """Decorate `main(argv=None)`: known errors -> one `error:` line and SystemExit(2)."""
    def wrap(main: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(main)
        def run(argv: Sequence[str] | None = None, *args: Any, **kwargs: Any) -> Any:
            argv, debug = _split_debug(argv)
            outer_debug, _debug[0] = _debug[0], _debug[0] or debug  # a dispatcher's --debug reaches its command
            held = len(_held)
            try:
                return main(argv, *args, **kwargs)
            except SystemExit as exc:
                _exit_now_if_hdf5_failed(exc.code)
                raise
            except KeyboardInterrupt:
                if _debug[0]:
                    traceback.print_exc()
                print("error: interrupted", file=sys.stderr)
                raise SystemExit(130) from None
            except Exception as exc:  # noqa: BLE001 - sorted into known errors and bugs below
                if not is_known(exc, extra):
                    raise
                print_error(exc)
                _exit_now_if_hdf5_failed(2)
                raise SystemExit(2) from None
            finally:
                _release_held(held)
                _debug[0] = outer_debug
        return run
    return wrap(func) if func is not None else wrap
