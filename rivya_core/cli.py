"""What both command lines share: an argument parser whose errors are one line."""

from __future__ import annotations

import argparse

EXIT_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error prints one line (and points at --help)
    instead of the usage block; subcommands inherit it."""

    def error(self, message: str) -> None:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")

    def add_subparsers(self, **kwargs):
        kwargs.setdefault("parser_class", OneLineParser)
        return super().add_subparsers(**kwargs)
