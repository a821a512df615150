"""AppTest of the Incidents page (bulk dry run, execute, execute again) and the Overview's alert strip."""

from __future__ import annotations

from tests.dashboard.conftest import metrics, support_events, texts


def test_overview_alert_strip_links_to_a_prepared_bulk_filter(open_page, seeded_url):
    at = open_page(seeded_url, "pages/overview.py")
    assert not at.exception
    shown = texts(at).replace("\\", "")  # Markdown escapes of database text
    assert "Stuck:" in shown and "1 vid-pro task(s) on motion" in shown
    links = [e for e in at.get("page_link") if "Prepare bulk" in e.proto.label]
    assert links, "no link to a prepared bulk filter"
    assert "incidents" in links[0].proto.page and "model=vid-pro" in links[0].proto.query_string


def test_dry_run_then_execute_then_execute_again(open_page, seeded_url):
    at = open_page(seeded_url, "pages/incidents.py", action="refund", provider="pixa", status="FAILED")
    assert not at.exception
    assert at.session_state["bulk_provider"] == "pixa" and at.session_state["bulk_status"] == ["FAILED"]
    at.button(key="bulk_dry_run").click().run()
    m = metrics(at)
    assert (m["Tasks matched"], m["Would act on"], m["Credits back to users"]) == ("1", "1", "10")
    assert support_events(seeded_url) == []  # a dry run changes nothing
    at.text_input(key="bulk_operator").input("sam")
    at.text_input(key="bulk_reason").input("pixa outage")
    at.button(key="bulk_execute").click().run()
    assert not at.exception
    assert "1 acted on" in texts(at) and "10 credits refunded" in texts(at)
    [(task_id, detail)] = support_events(seeded_url)
    assert task_id == 2 and detail["incident"] == 1
    at.button(key="bulk_dry_run").click().run()
    assert metrics(at)["Already handled"] == "1" and metrics(at)["Would act on"] == "0"
    at.button(key="bulk_execute").click().run()
    assert "0 acted on, 0 refused, 1 already handled" in texts(at)
    assert len(support_events(seeded_url)) == 1
    incidents = at.dataframe[-1].value
    assert list(incidents["runs"]) == [2] and list(incidents["credits_moved"]) == [10]


def test_viewers_dry_run_but_do_not_execute(open_page, seeded_url, monkeypatch):
    monkeypatch.setenv("RIVYA_VIEWERS", "vic:pw")
    at = open_page(
        seeded_url, "pages/incidents.py", session={"user": "vic", "role": "viewer"}, action="refund", provider="pixa"
    )
    assert not at.exception
    at.button(key="bulk_dry_run").click().run()
    assert metrics(at)["Would act on"] == "1"
    assert "needs the operator role" in texts(at)
    assert not [b for b in at.button if b.key == "bulk_execute"]


def test_a_bad_filter_value_is_one_plain_message(open_page, seeded_url):
    at = open_page(seeded_url, "pages/incidents.py")
    at.text_input(key="bulk_min_age_s").input("[soon](http://127.0.0.1:9/x)").run()
    assert not at.exception
    [err] = at.error
    # the message quotes the value inside a Markdown code span (pages._text.plain): shown as typed, no link
    assert "is not a duration" in err.value and "[soon](http://127.0.0.1:9/x)" in err.value
    assert err.value.startswith("`")
