"""Who may read and who may act: the sign-in gate and the role checks pages make.

access_config() -> AccessConfig        users and roles from the environment / st.secrets
access_gate() -> None                  login form when access control is on; st.stop() until signed in
ensure_reader() -> None                a page reached without passing app.py's gate stops here
can_act() -> bool                      the signed-in user (or everybody, access off) may act: support
                                       actions, audits, simulation runs, anything that writes
operator_only(what) -> bool            can_act(), and for a viewer an info line saying `what` needs the
                                       operator role: `if operator_only("Running the audit"): <button>`
"""

from __future__ import annotations

import os
from typing import Any

import streamlit as st

from pages._text import plain
from rivya_core import access


def _secrets() -> dict[str, Any] | None:
    try:
        return {"access": st.secrets["access"]} if "access" in st.secrets else None
    except Exception:  # no secrets.toml anywhere: nothing configured there
        return None


def access_config() -> access.AccessConfig:
    return access.load_config(os.environ, _secrets())


def access_gate() -> None:
    try:
        cfg = access_config()
    except access.AccessConfigError as exc:
        st.error(f"Access control is misconfigured: {plain(exc.message)}")
        st.stop()
    ss = st.session_state
    if not cfg.enabled:
        if not access.local_client(_client_ip()):
            st.error(
                "Access control is off (no users configured), so this dashboard answers only on this "
                "machine. Set RIVYA_OPERATORS / RIVYA_VIEWERS (or [access] in secrets) to serve it further."
            )
            st.stop()
        ss["role"] = access.Role.OPERATOR
        ss["user"] = None
        st.sidebar.caption(
            ":material/lock_open: Access control is off (no users configured): serve this dashboard on localhost only."
        )
        return
    if ss.get("user") and ss.get("user") in cfg.users:
        with st.sidebar:
            st.caption(f"Signed in as {plain(ss['user'])} ({plain(ss['role'])})")
            if st.button("Sign out", key="sign_out"):
                ss["user"] = ss["role"] = None
                st.rerun()
        return
    ss["role"] = None
    st.title("Sign in")
    with st.form("login"):
        name = st.text_input("User")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in"):
            role = cfg.authenticate(name, password)
            if role is None:
                st.error("Unknown user or wrong password.")
            else:
                ss["user"], ss["role"] = name, role
                st.rerun()
    st.stop()


def _client_ip() -> str | None:
    try:
        ip = st.context.ip_address
    except Exception:  # no browser connection (a test run): nothing remote either
        return None
    return ip if isinstance(ip, str) else None  # a test harness's stand-in is no address


def ensure_reader() -> None:
    """Defence in depth: a page reached without passing app.py's gate stops here."""
    cfg = access_config()
    if cfg.enabled and st.session_state.get("user") not in cfg.users:
        st.warning("Sign in first (open the dashboard's start page).")
        st.stop()


def can_act() -> bool:
    """The signed-in user is an operator; with access control off everybody is (open mode
    answers only local connections: access_gate)."""
    try:
        cfg = access_config()
    except access.AccessConfigError:
        return False
    return not cfg.enabled or access.allowed(st.session_state.get("role"), access.ACT)


def operator_only(what: str) -> bool:
    """True when the user may act; otherwise says, as plain text, that `what` needs the operator role.
    Every control that writes (an action, an audit run, a simulation run) is drawn only behind it."""
    if can_act():
        return True
    st.caption(f":material/lock: {what} needs the operator role; you are signed in as a viewer.")
    return False
