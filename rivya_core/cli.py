"""What both command lines share: an argument parser whose errors are one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from sqlalchemy.exc import SQLAlchemyError

from . import limits
from .domain import RivyaError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error prints one line (and points at --help)
    instead of the usage block; subcommands inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", OneLineParser)
        return super().add_subparsers(**kwargs)


def number(kind: str) -> Callable[[str], int | float]:
    """An argparse type for a number of the given kind (rivya_core.limits): a value out of
    range or not a number is a one-line usage error naming the option and the range."""
    limit = limits.LIMITS[kind]

    def parse(text: str) -> int | float:
        try:
            value: int | float = int(text) if limit.whole else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {limit.describe()}, not {text[:40]!r}") from None
        try:
            return limit.check(value, "value")
        except limits.LimitError:
            raise argparse.ArgumentTypeError(f"must be {limit.describe()}, not {text[:40]}") from None

    parse.__name__ = kind  # argparse names the type in some messages
    return parse


def run_command(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one subcommand; every expected failure becomes one line on stderr and exit status 2."""
    try:
        return command(args)
    except RivyaError as exc:
        reason = getattr(exc, "reason", None)  # a refused support action: which refusal, as its code
        return _fail(exc.message + (f" [{reason}]" if reason else ""))
    except (SQLAlchemyError, OSError) as exc:
        lines = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
        return _fail(f"database or file problem: {lines[0]}")
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, status: int = EXIT_ERROR) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status
