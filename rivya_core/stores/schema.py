"""The data contract of DESIGN.md as SQLAlchemy Core tables.

Table and column names here are public: the dashboard, the audit, imports of
real data and outside tools read them. Add freely; never rename or drop.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)

SCHEMA_VERSION = 1

metadata = MetaData()

Id = BigInteger().with_variant(Integer, "sqlite")

account = Table(
    "account",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(200), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("balance", BigInteger, nullable=False, default=0),  # cache of the ledger sum
    # the source's own id of an imported user (rivya_core.sources); NULL for rows this project wrote
    Column("external_ref", String(200)),
    CheckConstraint("balance >= 0", name="ck_account_balance_nonneg"),
    Index("ix_account_external_ref", "external_ref", unique=True),
)

ai_task = Table(
    "ai_task",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, nullable=False),
    Column("model", String(100), nullable=False),
    Column("category", String(20), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("params", JSON, nullable=False),
    Column("status", String(20), nullable=False),
    Column("billing_type", String(30), nullable=False),
    Column("reserved_credits", BigInteger, nullable=False),
    Column("provider", String(50), nullable=False),
    Column("upstream_task_id", String(200)),
    Column("result_urls", JSON(none_as_null=True)),  # no URLs is SQL NULL, not JSON null
    Column("error_code", String(80)),
    Column("error_message", Text),
    Column("failure_class", String(20)),
    Column("chat_message_id", Id),
    Column("created_at", DateTime, nullable=False),
    Column("submitted_at", DateTime),
    Column("finished_at", DateTime),
    Column("settled_at", DateTime),
    Column("next_check_at", DateTime),
    Column("check_attempts", Integer, nullable=False, default=0),
    # the task support re-ran this one from (rivya_core.support.rerun); added after version 1 (init_db migrates)
    Column("rerun_of", Id),
    # billable run seconds the provider reported for the job (rivya_core.cost); added after version 1
    Column("provider_run_s", Float),
    # the source's own id of an imported task (rivya_core.sources); NULL for rows this project wrote
    Column("external_ref", String(200)),
    Index("ix_ai_task_external_ref", "external_ref", unique=True),
    Index("ix_ai_task_user_created", "user_id", "created_at"),
    Index("ix_ai_task_status_created", "status", "created_at"),
    Index("ix_ai_task_upstream", "upstream_task_id"),
    Index("ix_ai_task_created", "created_at"),
    Index("ix_ai_task_next_check", "status", "next_check_at"),
    Index("ix_ai_task_chat_message", "chat_message_id"),
    Index("ix_ai_task_finished", "finished_at", "status"),  # time windows of the charts
    Index("ix_ai_task_rerun_of", "rerun_of"),  # a task's re-runs
)

credit_ledger = Table(
    "credit_ledger",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, nullable=False),
    Column("entry_type", String(20), nullable=False),
    Column("amount", BigInteger, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("task_id", Id),
    Column("chat_message_id", Id),
    Column("idempotency_key", String(200), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("note", Text),
    # issued by a support action (not by the service's rules); added after version 1 (init_db migrates)
    Column("support", Boolean, nullable=False, default=False, server_default=false()),
    # an imported entry derived from source rows: a JSON list naming them ("credit/<id>", ...);
    # NULL for entries this project's service wrote (rivya_core.sources)
    Column("derived_from", Text),
    UniqueConstraint("idempotency_key", name="uq_credit_ledger_idempotency_key"),
    CheckConstraint("amount <> 0", name="ck_credit_ledger_amount_nonzero"),
    CheckConstraint("balance_after >= 0", name="ck_credit_ledger_balance_nonneg"),
    # covering: a user's running sum (audit) and per-user sums (conservation) read only the index
    Index("ix_credit_ledger_user_running", "user_id", "id", "amount", "balance_after"),
    Index("ix_credit_ledger_task", "task_id"),
    Index("ix_credit_ledger_chat_message", "chat_message_id"),
    Index("ix_credit_ledger_type_amount", "entry_type", "amount"),  # covering: credit totals by type
    Index("ix_credit_ledger_created", "created_at"),  # time windows of the charts
)

notification = Table(
    "notification",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, nullable=False),
    Column("task_id", Id),
    Column("kind", String(40), nullable=False),
    Column("title", String(300), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("read_at", DateTime),
    Column("idempotency_key", String(200)),
    UniqueConstraint("idempotency_key", name="uq_notification_idempotency_key"),
    Index("ix_notification_user_created", "user_id", "created_at"),
    Index("ix_notification_task", "task_id"),
    Index("ix_notification_kind_read", "kind", "read_at"),  # covering: counts and unread per kind
)

task_event = Table(
    "task_event",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("task_id", Id, nullable=False),
    Column("at", DateTime, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("detail", JSON, nullable=False),
    Index("ix_task_event_task", "task_id", "id"),
)

provider_callback = Table(
    "provider_callback",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("provider", String(50), nullable=False),
    Column("webhook_id", String(200)),
    Column("upstream_task_id", String(200)),
    Column("task_id", Id),
    Column("received_at", DateTime, nullable=False),
    Column("signature_valid", Boolean, nullable=False),
    Column("outcome", String(30), nullable=False),
    Column("body", Text, nullable=False),
    Column("detail", Text),
    Index("ix_provider_callback_webhook", "provider", "webhook_id"),
    Index("ix_provider_callback_task", "task_id"),
    Index("ix_provider_callback_upstream", "upstream_task_id"),
    Index("ix_provider_callback_received", "received_at"),
)

# Added (init-db creates it on older databases): callbacks that arrived before their
# task had its upstream id, kept until a task takes that id (rivya_core.lifecycle).
parked_callback = Table(
    "parked_callback",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("callback_id", Id, nullable=False),
    Column("provider", String(50), nullable=False),
    Column("upstream_task_id", String(200), nullable=False),
    Column("received_at", DateTime, nullable=False),
    Column("state", String(20), nullable=False),
    Column("webhook_id", String(200)),
    Column("result_urls", JSON(none_as_null=True)),
    Column("error_code", String(80)),
    Column("error_message", Text),
    Column("failure_class", String(20)),
    Column("task_ref", String(100)),
    Column("claimed_task_id", Id),
    Column("claimed_at", DateTime),
    Index("ix_parked_callback_upstream", "provider", "upstream_task_id"),
)

chat_session = Table(
    "chat_session",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", Id, nullable=False),
    Column("model", String(100), nullable=False),
    Column("title", String(300), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Index("ix_chat_session_user", "user_id"),
)

chat_message = Table(
    "chat_message",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("session_id", Id, nullable=False),
    Column("role", String(20), nullable=False),
    Column("content", Text, nullable=False),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("reserved_credits", BigInteger, nullable=False, default=0),
    Column("charged_credits", BigInteger),
    Column("status", String(20), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("settled_at", DateTime),
    # covering: a session's totals (chat settlement page) read only the index
    Index("ix_chat_message_session_credits", "session_id", "reserved_credits", "charged_credits"),
    Index("ix_chat_message_status", "status"),
)

# Not a contract table: the audit's stored results (rivya_core.audit.record_audit), so pages
# show the latest verdict instead of re-running the audit over millions of rows on each load.
audit_run = Table(
    "audit_run",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("ran_at", DateTime, nullable=False),  # wall clock (UTC) when the audit finished
    Column("judged_at", DateTime, nullable=False),  # the `now` the audit judged ages against
    Column("policy", String(100), nullable=False),
    Column("policy_key", String(64), nullable=False),  # digest of the whole policy
    Column("data_mark", String(200), nullable=False),  # the newest row ids when it ran (staleness)
    Column("total", BigInteger, nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("report", JSON, nullable=False),  # AuditReport.to_dict(), rows capped
    Column("conservation", JSON),  # audit.conservation() of the same moment
    Column("stored_by", String(100)),  # who stored it: an operator's name, the command line (NULL: older rows)
    Index("ix_audit_run_policy", "policy_key", "id"),
)

# Not a contract table: a named bulk remediation (rivya_core.support.bulk). Each task it touched has a
# support_action event whose detail carries `incident` = this id; the counters sum its runs.
incident = Table(
    "incident",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False),
    Column("action", String(20), nullable=False),  # recheck | refund | mark-failed
    Column("filter", JSON, nullable=False),  # BulkFilter.to_dict()
    Column("operator", String(100), nullable=False),
    Column("reason", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),  # when first executed (clock.act_time, as its events)
    Column("finished_at", DateTime),  # the end of its latest run; NULL while a run is going
    Column("runs", Integer, nullable=False, default=0),
    Column("matched", BigInteger, nullable=False, default=0),  # tasks the filter matched (latest run)
    Column("acted", BigInteger, nullable=False, default=0),  # actions that went through (all runs)
    Column("refused", BigInteger, nullable=False, default=0),  # actions refused, with their event (all runs)
    Column("credits_moved", BigInteger, nullable=False, default=0),  # credits refunded by its actions
    UniqueConstraint("name", name="uq_incident_name"),
)

# Not a contract table: which alerts were pushed to the alert webhook (rivya_core.support.alert_push), so a
# second run sends nothing new and a cleared alert is announced once. `state`: quiet (nothing
# announced, or announced cleared), raised, or raising / clearing while a sender holds the claim
# (until `claimed_until`, wall clock UTC).
alert_notice = Table(
    "alert_notice",
    metadata,
    Column("key", String(200), primary_key=True),  # alert_push.alert_key: kind, provider, model or measure
    Column("state", String(20), nullable=False),
    Column("message", Text),  # the alert's sentence when last announced
    Column("alert", JSON),  # the structured alert when last announced
    Column("raised_at", DateTime),  # when the raise was delivered
    Column("cleared_at", DateTime),  # when the clear was delivered
    Column("claimed_until", DateTime),
    Column("attempts", Integer, nullable=False, default=0),  # deliveries tried, all runs
    Column("last_error", Text),  # why the latest delivery failed (never the URL)
)

# Not a contract table: where an imported database's rows came from (rivya_core.sources). One row
# per source; `not_recorded` lists the facts that source never had (callbacks, notifications,
# timeline, chat_billing), which the audit, the checklist and the pages report as such.
data_source = Table(
    "data_source",
    metadata,
    Column("key", String(50), primary_key=True),  # the source kind, e.g. shipany
    Column("source", String(500), nullable=False),  # its URL, password hidden
    Column("not_recorded", JSON, nullable=False),  # facts the source does not have
    Column("watermark", DateTime),  # the newest updated_at read (the next import reads from it minus the overlap)
    Column("as_of", DateTime),  # the source's own latest time (grants expired by then are expired)
    Column("imported_at", DateTime, nullable=False),  # wall clock (UTC) of the latest import
    Column("imports", Integer, nullable=False, default=0),
    Column("summary", JSON),  # the latest import's rows read and written per table
)

# Not a contract table: the grants of an imported source (ShipAny's `credit` rows of type grant),
# kept to derive expiries and to judge findings only that source can have (a grant driven below
# zero, credits refunded onto an expired grant). `remaining_credits` is the source's own figure;
# `replayed_remaining` what its history adds up to; `live` what of it a balance still counts.
source_grant = Table(
    "source_grant",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("external_ref", String(200), nullable=False),
    Column("user_id", Id, nullable=False),
    Column("credits", BigInteger, nullable=False),
    Column("remaining_credits", BigInteger, nullable=False),
    Column("replayed_remaining", BigInteger, nullable=False),
    Column("live", BigInteger, nullable=False),
    Column("scene", String(50)),
    Column("status", String(20), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime),
    Column("expired_at", DateTime),  # when its expire entry was written (NULL: not expired yet)
    UniqueConstraint("external_ref", name="uq_source_grant_external_ref"),
    Index("ix_source_grant_user", "user_id"),
)

schema_meta = Table(
    "schema_meta",
    metadata,
    Column("key", String(50), primary_key=True),
    Column("value", Text, nullable=False),
)

CONTRACT_TABLES = (
    "account",
    "ai_task",
    "credit_ledger",
    "notification",
    "task_event",
    "provider_callback",
    "chat_session",
    "chat_message",
)
