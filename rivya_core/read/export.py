"""A task's whole record as one JSON document: what support attaches to a ticket or hands to engineering.

    task_record(bind, task_id) -> dict     the task row, its timeline, ledger rows, provider callbacks
                                           (with their parked copies), notifications, the chat turn it
                                           belongs to, and its re-run links both ways; JSON-ready
    task_record_json(bind, task_id) -> str the same, as indented JSON text (what the CLI writes and the
                                           inspector's download holds)

Read-only. Every field is as stored (callback bodies, prompts and error messages are text from
outside: a reader shows them as text). The account is named by id only, so the file carries no
e-mail address or name.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

from ..stores.schema import parked_callback
from ..support.rerun import reruns_of
from .queries import Bind, connect, jsonable, rows, task_detail

FORMAT = "rivya.task_record/1"


def task_record(bind: Bind, task_id: int) -> dict[str, Any]:
    """See the module doc; raises NotFound for a missing task."""
    d = task_detail(bind, task_id)
    t = d["task"]
    ids = [c["id"] for c in d["callbacks"]]
    with connect(bind) as conn:
        parked = (
            rows(
                conn.execute(
                    select(*parked_callback.c)
                    .where(parked_callback.c.callback_id.in_(ids))
                    .order_by(parked_callback.c.id)
                )
            )
            if ids
            else []
        )
    return jsonable(
        {
            "format": FORMAT,
            "task": t,
            "timeline": d["events"],
            "ledger": d["ledger"],
            "callbacks": d["callbacks"],
            "parked_callbacks": parked,
            "notifications": d["notifications"],
            "chat_message": d["chat_message"],
            "rerun_of": t.get("rerun_of"),
            "reruns": [r["id"] for r in reruns_of(bind, t["id"])],
        }
    )


def task_record_json(bind: Bind, task_id: int) -> str:
    return json.dumps(task_record(bind, task_id), indent=2, ensure_ascii=False) + "\n"
