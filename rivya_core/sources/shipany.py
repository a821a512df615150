"""`import shipany`: a ShipAny-style production database, read-only, into the data contract.

The source (docs/shipany-schema.md; names from data/sources/shipany.toml or a fork's --map file)
is read in one read-only transaction: on PostgreSQL a REPEATABLE READ transaction declared
`SET TRANSACTION READ ONLY` on a session whose `default_transaction_read_only` is on, on SQLite a
`mode=ro` file. No DDL or write statement is ever sent to it.

The target is a contract database (`init-db` schema) written in one transaction, so a failed
import leaves it as it was. What becomes what:

- `user` -> `account` (`external_ref` = the user's id); a user id the tasks or credits name that
  the user table lacks gets a placeholder account, so no credit is lost.
- `ai_task` -> `ai_task` (`external_ref` = its id): `pending`/`processing` -> GENERATING,
  `success` -> SUCCESS (result URLs out of `task_info`), `failed` -> FAILED (error code and
  message out of `task_info`, `upstream_failed` when it has none; class provider), `canceled` ->
  FAILED `upstream_canceled` (class user: the template never refunds a cancel); media types
  `music`/`speech` -> audio; `text` is not a generation task and is counted apart; `options` ->
  params. The provider is called before the row is written, so submitted_at = created_at.
- `credit` -> `credit_ledger`, every row marked derived with its source rows named
  (`derived_from`): a grant -> `grant`; a consume -> `consume` (its task: the `ai_task` whose
  `credit_id` names it, else its metadata's `taskId`); a consume set to `deleted` (the template's
  refund) -> `refund` at its update time; the credits a grant still held when it expired ->
  `expire`; credits refunded onto a grant that had already expired -> `refund` then `expire`
  (the user lost them); credits a grant shows put back once more than its history explains ->
  a second `refund` (a task refunded twice). Entries go in time order per user with
  `balance_after` the running sum. The grants themselves are kept in `source_grant`.

Ids: an imported row keeps the contract id it was first given (looked up by `external_ref`),
so a second import never renumbers. Incremental: rows whose `updated_at` (else `created_at`) is
at or after the last import's watermark minus OVERLAP are read again; an entry is written once
(its idempotency key names its source rows), a task is updated in place: importing twice
writes the same rows.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

from ..stores.db import normalize_url, safe_url
from .mapping import load_map
from .shipany_rows import Importer
from .shipany_source import (
    OVERLAP,
    ImportSummary,
    Progress,
    ReadOnlySource,
    _prepare_target,
    _ts,
    draws,
    open_source,
    result_urls,
)

__all__ = ["draws", "import_shipany", "result_urls", "stderr_progress"]


def import_shipany(
    source: str,
    into: str,
    *,
    since: datetime | None = None,
    map_path: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> ImportSummary:
    """Import the ShipAny-style database at `source` into the contract database at `into`."""
    started = time.perf_counter()
    smap = load_map(map_path)
    src_engine = open_source(source)
    try:
        with ReadOnlySource(src_engine, smap) as src:
            src.check()
            tgt, previous = _prepare_target(into, force=force, dry_run=dry_run)
            try:
                mark = _ts(previous.get("watermark")) if previous else None
                if since is None and mark is not None:
                    since = mark - OVERLAP
                summary = ImportSummary(
                    safe_url(normalize_url(source)),
                    safe_url(normalize_url(into)),
                    since,
                    src.latest(),
                    _ts(previous["watermark"]) if previous else None,
                    dry_run,
                )
                with tgt.begin() as conn:
                    Importer(src, conn, summary, progress or (lambda _stage, _n: None)).run(previous)
                    if dry_run:
                        conn.rollback()
            finally:
                tgt.dispose()
    finally:
        src_engine.dispose()
    summary.seconds = time.perf_counter() - started
    return summary


_STAGE: list[str] = []


def stderr_progress(stage: str, n: int) -> None:
    """A progress line per stage on standard error (users, tasks, credits), rewritten in place."""
    if _STAGE and _STAGE[-1] != stage:
        sys.stderr.write("\n")
    _STAGE[:] = [stage]
    sys.stderr.write(f"\r    {stage}: {n:,} rows read")
    sys.stderr.flush()
