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
    both_ways = load_config({"RIVYA_VIEWERS": "ann:a1", "RIVYA_OPERATORS": "bob:b1"},
                            {"access": {"operators": {"ann": "a2"}, "viewers": {"bob": "b2"}}})
    assert both_ways.users["ann"][0] == Role.OPERATOR and both_ways.users["bob"][0] == Role.OPERATOR
    assert both_ways.authenticate("ann", "a2") == Role.OPERATOR  # the operator entry's password
    assert both_ways.authenticate("ann", "a1") is None
