"""The access rule: who may read, who may act, how passwords are checked."""

from __future__ import annotations

import hashlib

import pytest

from rivya_core.access import ACT, READ, AccessConfigError, Role, allowed, load_config


def test_nothing_configured_means_access_control_off():
    assert not load_config({}, None).enabled


def test_env_users_get_their_roles_and_wrong_passwords_fail():
    cfg = load_config({"RIVYA_OPERATORS": "olga:pw2", "RIVYA_VIEWERS": "vera:pw1, carl:x"})
    assert cfg.authenticate("olga", "pw2") is Role.OPERATOR
    assert cfg.authenticate("vera", "pw1") is Role.VIEWER
    assert cfg.authenticate("vera", "pw2") is None
    assert cfg.authenticate("nobody", "pw1") is None
    assert cfg.authenticate("vera", "") is None


def test_secrets_table_and_hashed_passwords():
    digest = hashlib.sha256(b"hunter2").hexdigest()
    cfg = load_config({}, {"access": {"operators": {"ann": f"sha256:{digest}"}, "viewers": {"vic": "v"}}})
    assert cfg.authenticate("ann", "hunter2") is Role.OPERATOR
    assert cfg.authenticate("ann", f"sha256:{digest}") is None
    assert cfg.authenticate("vic", "v") is Role.VIEWER


def test_viewers_read_operators_act():
    assert allowed(Role.VIEWER, READ) and not allowed(Role.VIEWER, ACT)
    assert allowed(Role.OPERATOR, READ) and allowed(Role.OPERATOR, ACT)
    assert not allowed(None, READ)


@pytest.mark.parametrize("value", ["olga", "olga:", ":pw", "a:b,,c"])
def test_malformed_env_entries_are_named(value):
    with pytest.raises(AccessConfigError, match="RIVYA_OPERATORS"):
        load_config({"RIVYA_OPERATORS": value})


def test_malformed_secret_is_named():
    with pytest.raises(AccessConfigError, match="access.viewers.vic"):
        load_config({}, {"access": {"viewers": {"vic": 3}}})


def test_operators_win_over_viewers_whichever_source_names_them():
    both_ways = load_config(
        {"RIVYA_VIEWERS": "ann:a1", "RIVYA_OPERATORS": "bob:b1"},
        {"access": {"operators": {"ann": "a2"}, "viewers": {"bob": "b2"}}},
    )
    assert both_ways.users["ann"][0] == Role.OPERATOR and both_ways.users["bob"][0] == Role.OPERATOR
    assert both_ways.authenticate("ann", "a2") == Role.OPERATOR  # the operator entry's password
    assert both_ways.authenticate("ann", "a1") is None


# --- which databases a session may read ---------------------------------------------------------


from rivya_core.access import SourceRefused, choose_source, local_client, may_type_url  # noqa: E402

SIGNED = {"RIVYA_OPERATORS": "olga:pw2", "RIVYA_VIEWERS": "vera:pw1"}


@pytest.fixture
def homes(tmp_path):
    data, runs, elsewhere = tmp_path / "data", tmp_path / "data" / "runs", tmp_path / "elsewhere"
    for d in (data, runs, elsewhere):
        d.mkdir(parents=True, exist_ok=True)
    for f in (data / "chaos.db", runs / "r1.db", elsewhere / "secret.db", data / "notes.txt"):
        f.write_bytes(b"")
    (data / "link.db").symlink_to(elsewhere / "secret.db")
    return {"data": data, "runs": runs, "elsewhere": elsewhere, "default": f"sqlite:///{data / 'rivya.db'}"}


def _choose(requested, role, cfg, homes):
    return choose_source(requested, role, cfg, default=homes["default"], sim_dirs=(homes["data"], homes["runs"]))


def test_open_mode_reads_any_url_and_answers_only_local_clients(homes):
    cfg = load_config({})
    assert _choose("postgresql://x@elsewhere/db", None, cfg, homes) == "postgresql://x@elsewhere/db"
    assert may_type_url(None, cfg)
    assert local_client(None) and local_client("127.0.0.1") and local_client("::1")
    assert local_client("::ffff:127.0.0.1")
    assert not local_client("192.0.2.7") and not local_client("2001:db8::1") and not local_client("junk")


@pytest.mark.parametrize("role", [Role.VIEWER, Role.OPERATOR])
def test_signed_in_users_choose_among_the_offered_sources(homes, role):
    cfg = load_config({**SIGNED, "RIVYA_DATA_SOURCES": '{"team": "postgresql://reader@127.0.0.1:5432/team"}'})
    assert _choose("", role, cfg, homes) == homes["default"]
    assert _choose("team", role, cfg, homes) == "postgresql://reader@127.0.0.1:5432/team"
    assert _choose("postgresql+psycopg://reader@127.0.0.1:5432/team", role, cfg, homes).endswith("/team")
    assert (
        _choose(f"sqlite:///{homes['data'] / 'chaos.db'}", role, cfg, homes)
        == f"sqlite:///{(homes['data'] / 'chaos.db').resolve()}"
    )
    assert _choose(str(homes["runs"] / "r1.db"), role, cfg, homes).endswith("runs/r1.db")
    refused = [
        f"sqlite:///{homes['elsewhere'] / 'secret.db'}",
        f"sqlite:///{homes['data'] / 'link.db'}",
        f"sqlite:///{homes['data'] / 'runs' / '..' / '..' / 'elsewhere' / 'secret.db'}",
        f"sqlite:///{homes['data'] / 'notes.txt'}",
        f"sqlite:///{homes['data'] / 'missing.db'}",
        "postgresql://postgres@127.0.0.1:5432/test",
        "/etc/passwd",
        "nonsense://",
    ]
    for url in refused:
        with pytest.raises(SourceRefused) as err:
            _choose(url, role, cfg, homes)
        assert url not in err.value.message
    assert not may_type_url(role, cfg)


def test_free_form_urls_only_for_operators_and_only_when_allowed(homes):
    for cfg in (
        load_config({**SIGNED, "RIVYA_ALLOW_ANY_URL": "1"}),
        load_config({}, {"access": {"operators": {"olga": "pw2"}, "allow_any_url": True}}),
    ):
        assert _choose("postgresql://x@127.0.0.1/other", Role.OPERATOR, cfg, homes) == "postgresql://x@127.0.0.1/other"
        assert may_type_url(Role.OPERATOR, cfg) and not may_type_url(Role.VIEWER, cfg)
        with pytest.raises(SourceRefused, match="only an operator"):
            _choose("postgresql://x@127.0.0.1/other", Role.VIEWER, cfg, homes)


@pytest.mark.parametrize(
    "env, where",
    [
        ({"RIVYA_DATA_SOURCES": "team=x"}, "RIVYA_DATA_SOURCES"),
        ({"RIVYA_DATA_SOURCES": '{"team": 3}'}, "RIVYA_DATA_SOURCES.team"),
        ({"RIVYA_ALLOW_ANY_URL": "maybe"}, "RIVYA_ALLOW_ANY_URL"),
    ],
)
def test_malformed_source_settings_are_named(env, where):
    with pytest.raises(AccessConfigError, match=where):
        load_config(env)


def test_configured_sources_from_secrets(homes):
    cfg = load_config({}, {"access": {"viewers": {"vic": "v"}, "sources": {"team": "sqlite:////srv/team.db"}}})
    assert _choose("team", Role.VIEWER, cfg, homes) == "sqlite:////srv/team.db"
