"""The names a source's tables and columns have: the template's defaults, renamed by a TOML file.

`data/sources/shipany.toml` holds the ShipAny template's own names; a fork's file renames any of
them (`[tables]` logical = actual, `[columns.<logical table>]` logical = actual). A name the file
does not mention keeps the default; a logical name the importer does not know is an error, so a
typo is not silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import column, table

from .. import tomlfile
from ..domain import RivyaError

SHIPANY_DEFAULT = Path(__file__).resolve().parent.parent.parent / "data" / "sources" / "shipany.toml"


class MappingError(RivyaError):
    code = "source_mapping_invalid"
    user_correctable = True


@dataclass(frozen=True)
class SourceMap:
    """Logical table -> actual name, and logical (table, column) -> actual column name."""

    tables: dict[str, str]
    columns: dict[str, dict[str, str]]

    def name(self, logical_table: str) -> str:
        return self.tables[logical_table]

    def column_name(self, logical_table: str, logical_column: str) -> str:
        return self.columns[logical_table][logical_column]

    def select_table(self, logical_table: str, logical_columns: list[str] | None = None) -> Any:
        """A lightweight SQLAlchemy table of the actual names (columns keyed by their logical
        names through labels in `columns_of`)."""
        cols = logical_columns or list(self.columns[logical_table])
        return table(self.name(logical_table), *(column(self.column_name(logical_table, c)) for c in cols))

    def columns_of(self, logical_table: str, t: Any, logical_columns: list[str] | None = None) -> list[Any]:
        cols = logical_columns or list(self.columns[logical_table])
        return [t.c[self.column_name(logical_table, c)].label(c) for c in cols]


def _check_names(data: dict[str, Any], source: str) -> dict[str, Any]:
    for key in data:
        if key not in ("tables", "columns"):
            raise MappingError(f"{source}: unknown section [{key}] (expected [tables] and [columns.TABLE])")
    for key in ("tables", "columns"):
        if key in data and not isinstance(data[key], dict):
            raise MappingError(f"{source}: [{key}] must be a table of names")
    return data


def load_map(path: str | Path | None = None) -> SourceMap:
    """The template's names (data/sources/shipany.toml), overridden by `path` when given."""
    base = _check_names(tomlfile.load(SHIPANY_DEFAULT, MappingError, "mapping"), str(SHIPANY_DEFAULT))
    tables = {k: str(v) for k, v in base["tables"].items()}
    columns = {t: {k: str(v) for k, v in cols.items()} for t, cols in base["columns"].items()}
    if path is None:
        return SourceMap(tables, columns)
    over = _check_names(tomlfile.load(path, MappingError, "mapping"), str(path))
    for logical, actual in over.get("tables", {}).items():
        if logical not in tables:
            raise MappingError(
                f"{path}: [tables] {logical!r} is not a table the importer reads (one of: {', '.join(tables)})"
            )
        tables[logical] = _name(actual, path, f"[tables] {logical}")
    for logical_table, cols in over.get("columns", {}).items():
        if logical_table not in columns:
            raise MappingError(
                f"{path}: [columns.{logical_table}] is not a table the importer reads (one of: {', '.join(columns)})"
            )
        if not isinstance(cols, dict):
            raise MappingError(f"{path}: [columns.{logical_table}] must be a table of names")
        for logical, actual in cols.items():
            if logical not in columns[logical_table]:
                raise MappingError(
                    f"{path}: [columns.{logical_table}] {logical!r} is not a column the importer "
                    f"reads (one of: {', '.join(columns[logical_table])})"
                )
            columns[logical_table][logical] = _name(actual, path, f"[columns.{logical_table}] {logical}")
    return SourceMap(tables, columns)


def _name(value: Any, path: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"{path}: {where} must be a non-empty name, not {value!r}")
    return value
