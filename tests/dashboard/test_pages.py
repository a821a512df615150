"""AppTest smoke tests of the support pages on an empty, a small known and an unreadable database."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rivya_core.domain import SupportAction
from tests.dashboard.conftest import PAGE_TITLES, metrics, texts

PAGES = {
    p: PAGE_TITLES[p]
    for p in ("pages/overview.py", "pages/live_tasks.py", "pages/task_inspector.py", "pages/checklist.py")
}


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_on_empty_database(open_page, empty_url, page):
    at = open_page(empty_url, page)
    assert not at.exception
    assert at.title[0].value == PAGES[page]


@pytest.mark.parametrize("page", [p for p in PAGES if p != "pages/checklist.py"])
def test_bad_url_is_a_message_not_a_traceback(open_page, tmp_path, page):
    at = open_page(f"sqlite:///{tmp_path / 'missing.db'}", page)
    assert not at.exception
    assert "Cannot read this database" in texts(at)


def test_database_without_schema_says_so(open_page, tmp_path):
    (tmp_path / "plain.db").write_bytes(b"")
    at = open_page(f"sqlite:///{tmp_path / 'plain.db'}", "pages/overview.py")
    assert not at.exception
    assert "no Rivya schema" in texts(at)


def test_malformed_url_is_a_message(open_page):
    at = open_page("nosuchdriver://x/y", "pages/overview.py")
    assert not at.exception
    assert "Cannot read this database" in texts(at)


def test_overview_shows_known_numbers(open_page, seeded_url):
    at = open_page(seeded_url)  # the default page
    assert not at.exception
    m = metrics(at)
    assert m["All tasks"] == "4"
    assert (m["Waiting"], m["Generating"], m["Success"], m["Failed"]) == ("1", "1", "1", "1")
    assert (m["Granted"], m["Charged for tasks"], m["Refunded for tasks"], m["Chat charged"]) == ("300", "70", "0", "0")
    assert m["Left in balances"] == "230"  # 300 − 70 + 0 − 0, and the accounts hold 80 + 150
    assert "1 violation" in texts(at).replace("**", "")


def test_overview_shows_revenue_cost_and_margin_in_money(open_page, seeded_url):
    m = metrics(open_page(seeded_url))
    # 70 credits charged, none refunded, at the default 0.05 USD a credit; the seed's models have no
    # provider price in the catalogue, so they cost nothing upstream
    assert (m["Revenue (USD)"], m["Provider cost (USD)"], m["Margin (USD)"]) == ("3.50", "0.00", "3.50")


def test_empty_overview_says_there_is_nothing_yet(open_page, empty_url):
    at = open_page(empty_url, "pages/overview.py")
    assert metrics(at)["All tasks"] == "0"
    assert "no tasks yet" in texts(at)


def test_live_tasks_lists_active_tasks_and_flags_the_stuck_one(open_page, seeded_url):
    at = open_page(seeded_url, "pages/live_tasks.py")
    assert not at.exception
    assert metrics(at)["Stuck (in this view)"] == "1"
    df = at.dataframe[0].value.data if hasattr(at.dataframe[0].value, "data") else at.dataframe[0].value
    assert sorted(df["id"]) == [3, 4]
    assert df.set_index("id").loc[3, "stuck"]


def test_inspector_finds_a_task_by_upstream_id(open_page, seeded_url):
    at = open_page(seeded_url, "pages/task_inspector.py")
    at.text_input[0].input("up-2").run()
    assert not at.exception
    assert "Task #2 — FAILED" in texts(at)
    assert "provider_error" in texts(at)
    assert "**Verdict:**" in texts(at)  # the checklist, answered by diagnose
    assert "Recheck before running again" in texts(at)


def test_inspector_opens_a_task_from_the_query_param(open_page, seeded_url):
    at = open_page(seeded_url, "pages/task_inspector.py", task="1")
    assert not at.exception
    assert "Task #1 — SUCCESS" in texts(at)


def test_inspector_reports_no_match(open_page, seeded_url):
    at = open_page(seeded_url, "pages/task_inspector.py")
    at.text_input[0].input("nothing like this").run()
    assert "No task matches" in texts(at)


def test_inspector_search_by_user_lists_choices(open_page, seeded_url):
    at = open_page(seeded_url, "pages/task_inspector.py")
    at.text_input[0].input("Bo Chen").run()
    assert not at.exception
    assert sorted(at.selectbox[-1].options) != []
    assert "2 tasks match" in texts(at)


def test_checklist_links_each_step(open_page, empty_url):
    at = open_page(empty_url, "pages/checklist.py")
    assert not at.exception
    assert len(at.checkbox) == 9
    at.checkbox[0].check().run()
    assert "1 of 5 checked" in [p.proto.text for p in at.get("progress")][0]


def _by_label(elements, label):
    return next(e for e in elements if e.label == label)


# The inspector's action radio offers SupportAction members under these words (pages/task_inspector.py)
ACTION_BY_WORDS = {
    "Re-check upstream": SupportAction.RECHECK,
    "Issue the due refund": SupportAction.REFUND,
    "Mark stuck task failed": SupportAction.MARK_FAILED,
}


def _run_action(at, action: str, operator: str = "Dana", reason: str = "user asked"):
    radio = _by_label(at.radio, "Action")
    assert action in radio.options, radio.options
    radio.set_value(ACTION_BY_WORDS[action])
    _by_label(at.text_input, "Operator name").input(operator)
    _by_label(at.text_input, "Reason (kept in the task's timeline)").input(reason)
    _by_label(at.button, next(b.label for b in at.button if b.label.startswith("Run action"))).click().run()
    return at


def test_refund_action_refunds_once_then_is_refused(open_page, seeded_url):
    at = open_page(seeded_url, "pages/task_inspector.py", task="2")
    _run_action(at, "Issue the due refund")
    assert not at.exception
    assert "Issue the due refund on task #2: done" in texts(at)
    ledger = at.dataframe  # the ledger tab now holds the refund row
    assert any("refund" in set(d.value["entry_type"]) for d in ledger if "entry_type" in d.value.columns)
    _run_action(at, "Issue the due refund")
    assert "refused (already_refunded)" in texts(at)


def test_refund_not_due_on_success_is_refused_with_the_core_reason(open_page, seeded_url):
    at = open_page(seeded_url, "pages/task_inspector.py", task="1")
    _run_action(at, "Issue the due refund")
    assert "refused (not_failed)" in texts(at)


def test_action_needs_operator_and_reason(open_page, seeded_url):
    at = open_page(seeded_url, "pages/task_inspector.py", task="2")
    _run_action(at, "Issue the due refund", operator=" ", reason="")
    assert "Give your name and a reason" in texts(at)


def test_login_is_required_when_users_are_configured(open_page, seeded_url, monkeypatch):
    monkeypatch.setenv("RIVYA_VIEWERS", "vera:pw1")
    at = open_page(seeded_url)
    assert not at.exception
    assert at.title[0].value == "Sign in"
    assert not at.metric  # nothing read before signing in
    at.switch_page("pages/task_inspector.py").run()
    assert "Sign in first" in texts(at)
    assert not at.metric


def test_viewer_reads_but_gets_no_actions(open_page, seeded_url, monkeypatch):
    monkeypatch.setenv("RIVYA_VIEWERS", "vera:pw1")
    monkeypatch.setenv("RIVYA_OPERATORS", "olga:pw2")
    at = open_page(seeded_url, session={"user": "vera", "role": "viewer"})
    assert at.title[0].value == "Overview"
    at.switch_page("pages/task_inspector.py")
    at.query_params["task"] = "2"
    at.run()
    assert not at.exception
    assert "Task #2 — FAILED" in texts(at)
    assert "need the operator role" in texts(at)


def test_signed_in_operator_acts_under_their_own_name(open_page, seeded_url, monkeypatch):
    monkeypatch.setenv("RIVYA_OPERATORS", "olga:pw2")
    at = open_page(seeded_url, session={"user": "olga", "role": "operator"})
    at.switch_page("pages/task_inspector.py")
    at.query_params["task"] = "2"
    at.run()
    name = _by_label(at.text_input, "Operator name")
    assert name.value == "olga" and name.disabled  # nobody can type another name in
    _by_label(at.radio, "Action").set_value(ACTION_BY_WORDS["Issue the due refund"])
    _by_label(at.text_input, "Reason (kept in the task's timeline)").input("user asked")
    _by_label(at.button, next(b.label for b in at.button if b.label.startswith("Run action"))).click().run()
    assert not at.exception and "Issue the due refund on task #2: done" in texts(at)
    from rivya_core.read.queries import task_detail
    from rivya_core.stores.db import make_engine

    actions = [e["detail"] for e in task_detail(make_engine(seeded_url), 2)["events"] if e["kind"] == "support_action"]
    assert actions[-1]["operator"] == "olga"


def test_a_stuck_waiting_task_of_the_demo_is_finished_by_the_inspectors_recheck(open_page, tmp_path):
    """The demo's crash leftovers (WAITING, charged, never submitted), as support meets them: the
    checklist advises a re-check, and the inspector's re-check finishes the task (the recorded
    provider takes no new job: failed, refunded)."""
    from sqlalchemy import create_engine, text

    from simulations.demo import ensure_demo_data

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    ensure_demo_data(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        waiting = conn.scalar(text("select min(id) from ai_task where status = 'WAITING'"))
    at = open_page(url, "pages/task_inspector.py", task=str(waiting))
    assert not at.exception
    assert "re-check upstream" in texts(at).lower()
    _run_action(at, "Re-check upstream")
    assert not at.exception
    assert f"Re-check upstream on task #{waiting}: done. The task is now FAILED; refunded " in texts(at)
    with engine.connect() as conn:
        refunds = conn.scalar(
            text("select count(*) from credit_ledger where entry_type = 'refund' and task_id = :t"), {"t": waiting}
        )
    engine.dispose()
    assert refunds == 1


def test_a_stuck_task_s_verdict_is_a_warning_even_when_every_item_reads_fine(open_page, seeded_url):
    """Task 3 has generated for two hours (stuck, within the timeout) and the provider answered a poll:
    no checklist item warns, yet the verdict is stuck and drawn as a warning, never a success."""
    from sqlalchemy import insert

    from rivya_core.stores import schema
    from rivya_core.stores.db import make_engine
    from tests.dashboard.seed import T0

    engine = make_engine(seeded_url)
    with engine.begin() as conn:
        conn.execute(
            insert(schema.task_event).values(
                task_id=3, at=T0 + timedelta(minutes=127), kind="poll", detail={"state": "running"}
            )
        )
    engine.dispose()
    at = open_page(seeded_url, "pages/task_inspector.py", task="3")
    assert not at.exception
    assert any("Verdict" in w.value and "stuck — past the stuck threshold" in w.value for w in at.warning)
    assert not any("Verdict" in s.value for s in at.success)


def test_an_audit_computed_on_load_is_not_called_stored(open_page, seeded_url):
    """No audit_run row: the Overview and the Refund audit say the audit was computed now, not stored."""
    from tests.dashboard.conftest import audit_runs

    for page in ("pages/overview.py", "pages/refund_audit.py"):
        at = open_page(seeded_url, page)
        assert not at.exception
        shown = texts(at)
        assert "Audit computed now, not stored (run the audit to store it)" in shown, page
        assert "stored at" not in shown.lower(), page
    assert audit_runs(seeded_url) == 0


def test_a_stored_audit_says_when_and_by_whom(open_page, seeded_url, monkeypatch):
    monkeypatch.setenv("RIVYA_OPERATORS", "olga:pw2")
    at = open_page(seeded_url, "pages/refund_audit.py", session={"user": "olga", "role": "operator"})
    _by_label(at.button, "Run the audit now").click().run()
    assert not at.exception
    assert "Audit stored at " in texts(at) and " by olga" in texts(at)
    at.switch_page("pages/overview.py").run()
    shown = texts(at)
    assert "Audit stored at " in shown and " by olga" in shown and "computed now" not in shown


def test_the_support_forms_say_who_sees_what(open_page, seeded_url):
    at = open_page(seeded_url, "pages/task_inspector.py", task="3")
    shown = texts(at)
    assert "internal" in shown and "timeline" in shown
    assert "Your video from vid-pro could not be completed; your 50 credits were refunded." in shown
    at = open_page(seeded_url, "pages/incidents.py")
    shown = texts(at)
    assert "internal" in shown and "incident name" in shown and "could not be completed" in shown


def test_marking_failed_from_the_inspector_keeps_the_reason_from_the_customer(open_page, seeded_url):
    from rivya_core.read.queries import task_detail
    from rivya_core.stores.db import make_engine

    at = open_page(seeded_url, "pages/task_inspector.py", task="3")
    _run_action(at, "Mark stuck task failed", operator="Dana", reason="motion hang; upstream lost the job")
    assert not at.exception
    engine = make_engine(seeded_url)
    detail = task_detail(engine, 3)
    engine.dispose()
    [note] = detail["notifications"]
    assert note["body"] == "Your video from vid-pro could not be completed; your 50 credits were refunded."
    assert "Dana" not in detail["task"]["error_message"] and "hang" not in detail["task"]["error_message"]
    [act] = [e["detail"] for e in detail["events"] if e["kind"] == "support_action"]
    assert (act["operator"], act["reason"]) == ("Dana", "motion hang; upstream lost the job")


def test_the_confirmation_says_the_money(open_page, seeded_url):
    at = open_page(seeded_url, "pages/task_inspector.py", task="3")
    _run_action(at, "Mark stuck task failed")
    assert "Mark stuck task failed on task #3: done. The task is now FAILED; refunded 50 credits." in texts(at)
    at = open_page(seeded_url, "pages/task_inspector.py", task="2")
    _run_action(at, "Issue the due refund")
    assert "Issue the due refund on task #2: done. The task is now FAILED; refunded 10 credits." in texts(at)


def test_the_confirmation_says_why_no_credits_went_back(open_page, seeded_url, monkeypatch, tmp_path):
    policy = tmp_path / "keep.toml"
    policy.write_text('[policy]\nname = "keep"\nrefund_classes = []\n', encoding="utf-8")
    monkeypatch.setenv("RIVYA_POLICY", str(policy))
    at = open_page(seeded_url, "pages/task_inspector.py", task="3")
    _run_action(at, "Mark stuck task failed")
    shown = texts(at).replace("`", "")  # the policy's name comes from a file: shown as plain text
    assert (
        "Mark stuck task failed on task #3: done. The task is now FAILED; no refund: policy 'keep' keeps "
        "credits for infrastructure failures."
    ) in shown
