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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Completed:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


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


def run_main(module: str, *argv: str, env: Mapping[str, str] | None = None, unset: tuple[str, ...] = (),
             cwd: str | Path | None = None) -> Completed:
    """`python -m module *argv`, in process: env adds variables and unset removes some for the call
    (both restored afterwards), cwd is the working directory during it."""
    main = importlib.import_module(f"{module}.__main__").main
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    with _environment(env, unset), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
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
