"""Run a command line in this process: `python -m MODULE ARGV...` as its `main(argv)`.

Most CLI tests check what a command prints, what it exits with and what it writes, not the
process around it; calling `main` saves an interpreter start and the imports (a second or more
each on a loaded machine). Tests of the process itself (a killed run, signals, a server, the same
bytes across interpreters, `python -m` dispatch) keep starting one.

The result has the fields of `subprocess.CompletedProcess` that the tests read. An argparse
usage error (SystemExit) becomes its exit status; any other exception propagates, so a command
that would have printed a traceback fails the test with it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import shlex
import signal
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Completed:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


class CommandTimeout(Exception):
    """The command was still running after its timeout (a refusal that should have been immediate)."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Like subprocess.run's timeout: a command that hangs (a server that should have refused to
    start) raises CommandTimeout in the test instead of blocking it for ever."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(_signum, _frame):
        raise CommandTimeout(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _environment(env: Mapping[str, str] | None, unset: tuple[str, ...]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        for key in unset:
            os.environ.pop(key, None)
        os.environ.update(env or {})
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_main(
    module: str,
    *argv: str,
    env: Mapping[str, str] | None = None,
    unset: tuple[str, ...] = (),
    cwd: str | Path | None = None,
    timeout: float = 120,
) -> Completed:
    """`python -m module *argv`, in process: env adds variables and unset removes some for the call
    (both restored afterwards), cwd is the working directory during it, and after timeout seconds
    it is interrupted with CommandTimeout."""
    main = importlib.import_module(f"{module}.__main__").main
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    with _environment(env, unset), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _deadline(timeout):
        try:
            if cwd is not None:
                os.chdir(cwd)
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse: usage errors and --help
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if isinstance(exc.code, str):
                    print(exc.code, file=err)
        finally:
            os.chdir(here)
    return Completed([module, *argv], int(code or 0), out.getvalue(), err.getvalue())


def run_line(line: str, **kwargs) -> Completed:
    """run_main from one string: `"rivya_core audit --db x.db"`."""
    module, *argv = shlex.split(line)
    return run_main(module, *argv, **kwargs)
