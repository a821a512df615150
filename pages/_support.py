"""Support actions on the session's database, and the billing policy it is judged with.

policy_in_force() -> tuple[BillingPolicy, str]
    The billing policy to judge the current database with, and a sentence saying
    where it comes from (it quotes names a database recorded: show it through plain()): a simulation database's recorded scenario, a realtime
    run this session started, else RIVYA_POLICY or the default.
support_service(policy: BillingPolicy) -> LifecycleService
    The service support actions go through, over current_url()'s one cached writable store
    (support_engine(): its engine, for bulk incidents). On a simulation
    database its providers answer from the farm's recorded jobs and its clock is
    pinned at the database's latest time (rivya_core.wiring provider sources;
    importing this module registers the simulations package's).
who_sees_what(task, ledger, policy) -> str
    The support form's sentence on who reads what: the operator's name and reason are
    internal (the timeline); what the customer is told if the task is marked failed.
record_audit_now(policy, row_cap) -> StoredAudit
    Run the whole audit on the current database and store it in `audit_run` (an
    operator's act: the only page path that writes it; pages read through read-only engines).
"""

from __future__ import annotations

import os

import streamlit as st
from sqlalchemy import Engine

from pages._cache import cached_df
from pages._source import current_url
from pages._text import plain
from rivya_core.domain import ACTIVE, RivyaError
from rivya_core.policy import BillingPolicy
from rivya_core.stores import db
from rivya_core.stores.sql import SqlStore, open_store

try:  # registers the simulation databases' recorded providers with rivya_core.wiring
    import simulations.recorded  # noqa: F401
except ModuleNotFoundError:
    pass


@st.cache_resource(show_spinner=False, on_release=lambda store: store.engine.dispose())
def _write_store(url: str) -> SqlStore:
    """The one writable store (and engine) of a database for this dashboard process: support
    actions and stored audits reuse it, so a click never builds an engine; disposed when the
    cache lets it go."""
    return open_store(url)


def support_engine() -> Engine:
    """The writable engine of the current database (bulk incidents record through it)."""
    return _write_store(current_url()).engine


def support_service(policy: BillingPolicy):
    """A LifecycleService over the current database for support actions (see module doc)."""
    from rivya_core.wiring import service_for_store

    return service_for_store(_write_store(current_url()), policy=policy)


def who_sees_what(task: dict, ledger: list[dict], policy: BillingPolicy) -> str:
    """Markdown: who reads what the operator writes, and what the customer is told (rivya_core.rules)."""
    from rivya_core.rules import mark_failed_refund, support_failure_notice

    internal = (
        "**Who sees what.** Your name and the reason are internal: they go into the task's timeline "
        "(its support action event), never to the customer."
    )
    if task["status"] not in ACTIVE:
        return f"{internal} A refund sends the customer no message (their balance shows it as `support refund`)."
    mine = [e for e in ledger if e.get("task_id") == task["id"]]
    charged = -sum(e["amount"] for e in mine if e["entry_type"] == "consume")
    refunded = any(e["entry_type"] == "refund" for e in mine)
    back = mark_failed_refund(charged, refunded, policy)
    told = support_failure_notice(task["category"], task["model"], charged, back)[1]
    return (
        f"{internal} If you mark the task failed, the customer is told: {plain(told)} A refund sends no message (their balance shows it as "
        "`support refund`); a re-check tells them only the task's outcome, if it finishes the task."
    )


def record_audit_now(policy: BillingPolicy, row_cap: int):
    """The audit run now over a writable engine and stored under the signed-in operator (see module doc)."""
    from pages._access import access_config
    from rivya_core.audit import run_and_record

    by = (st.session_state.get("user") if access_config().enabled else None) or "an operator in open mode"
    return run_and_record(support_engine(), policy, row_cap=row_cap, stored_by=by)


# --- the billing policy a database is judged with -----------------------------------------


def _recorded_policy(engine: Engine, url: str) -> tuple[BillingPolicy, str] | None:
    from simulations.recorded import recorded_policy

    return recorded_policy(engine, db.sqlite_path(url))


def policy_in_force() -> tuple[BillingPolicy, str]:
    """(policy, where it comes from) for the current database; a bad policy source reads as a warning."""
    from rivya_core.wiring import POLICY_ENV, policy_from

    url = current_url()
    try:
        found = cached_df(_recorded_policy, url)
        if found is not None:
            return found
        policy = policy_from()
    except RivyaError as exc:
        st.warning(
            f"Could not read the billing policy for this database ({plain(exc.message)}); "
            "judging with the default policy."
        )
        return BillingPolicy(), "the default policy"
    if os.environ.get(POLICY_ENV):
        return policy, f"policy `{policy.name}` from {POLICY_ENV} ({os.environ[POLICY_ENV]})"
    return policy, "the default policy"
