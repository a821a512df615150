"""rivya_core.sources without a server: the mapping file, reading ShipAny's JSON columns, and the
facts an imported database records (a SQLite source of hand-written rows)."""

from __future__ import annotations

import pytest

from rivya_core.audit import audit
from rivya_core.sources.facts import NATIVE, source_facts
from rivya_core.sources.mapping import MappingError, load_map
from rivya_core.sources.shipany import draws, import_shipany, result_urls
from rivya_core.stores.db import init_db, make_engine
from tests.shipany_source import build_source, hand_written


def test_the_shipped_map_holds_the_template_s_names():
    m = load_map()
    assert (m.name("ai_task"), m.name("credit"), m.column_name("credit", "consumed_detail")) == (
        "ai_task",
        "credit",
        "consumed_detail",
    )


@pytest.mark.parametrize(
    "text, says",
    [
        ('[tables]\ncredits = "x"\n', "'credits' is not a table the importer reads"),
        ('[columns.credit]\nconsumed = "x"\n', "'consumed' is not a column the importer reads"),
        ('[columns.ai_task]\nstatus = ""\n', "must be a non-empty name"),
        ("[renames]\n", "unknown section [renames]"),
        ("tables = 3\n", "[tables] must be a table of names"),
    ],
)
def test_a_bad_map_file_is_refused_naming_what(tmp_path, text, says):
    path = tmp_path / "fork.toml"
    path.write_text(text)
    with pytest.raises(MappingError) as err:
        load_map(path)
    assert says in err.value.message and str(path) in err.value.message


def test_task_info_and_consumed_detail_as_the_template_writes_them():
    info = '{"images": [{"imageUrl": "https://a/1.png"}, {"nope": 1}], "songs": [{"audioUrl": "https://a/s.mp3"}]}'
    import json

    assert result_urls(json.loads(info)) == ["https://a/1.png", "https://a/s.mp3"]
    assert result_urls("not json") == [] and result_urls(None) == []
    assert draws('[{"creditId": "g1", "creditsConsumed": 3}, {"creditId": "g2", "creditsConsumed": 0}]') == [("g1", 3)]
    assert draws("garbage") == [] and draws(None) == []


def test_a_database_this_project_wrote_records_everything(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'native.db'}")
    init_db(engine)
    assert source_facts(engine) == NATIVE and audit(engine).not_recorded == {}
    engine.dispose()


def test_an_imported_sqlite_source_says_what_it_never_recorded(tmp_path):
    w, planted = hand_written()
    src = f"sqlite:///{tmp_path / 'src.db'}"
    build_source(src, w)
    into = f"sqlite:///{tmp_path / 'into.db'}"
    import_shipany(src, into)
    engine = make_engine(into, read_only=True)
    try:
        facts = source_facts(engine)
        assert facts.source == "shipany" and not facts.has("notifications") and facts.has("nothing else")
        report = audit(engine)
        assert "notification_missing" not in report.counts() and "notification_missing" in report.not_recorded
        assert report.by_kind()["canceled_not_refunded"].count == 1
    finally:
        engine.dispose()
