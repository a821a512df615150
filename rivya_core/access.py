"""Who may look at the dashboard and who may act: the access rule, without Streamlit.

Two roles. A *viewer* reads every page; an *operator* reads and also runs
support actions (re-check upstream, refund, mark failed). Users come from the
environment or from a secrets mapping (Streamlit's st.secrets):

    RIVYA_OPERATORS="alice:s3cret,bob:sha256:<hex digest of the password>"
    RIVYA_VIEWERS="carol:pw"

    # .streamlit/secrets.toml
    [access.operators]
    alice = "s3cret"
    [access.viewers]
    carol = "sha256:<hex>"

With no user configured anywhere, access control is off: everybody is an
operator, and the dashboard must only be served on localhost.
Passwords are compared in constant time (hmac.compare_digest).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .domain import RivyaError


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


class AccessConfigError(RivyaError):
    code = "access_config_invalid"


READ = "read"
ACT = "act"
_GRANTS = {Role.VIEWER: frozenset({READ}), Role.OPERATOR: frozenset({READ, ACT})}


def allowed(role: Role | None, action: str) -> bool:
    """True when `role` may do `action` (READ or ACT)."""
    return role is not None and action in _GRANTS[Role(role)]


@dataclass(frozen=True)
class AccessConfig:
    users: dict[str, tuple[Role, str]] = field(default_factory=dict)  # name -> (role, stored password)

    @property
    def enabled(self) -> bool:
        return bool(self.users)

    def authenticate(self, name: str, password: str) -> Role | None:
        """The user's role when the password matches, else None (also for unknown users)."""
        role, stored = self.users.get(name, (None, "\x00unknown"))
        ok = _check(stored, password or "")
        return role if ok and role is not None else None


def _check(stored: str, given: str) -> bool:
    if stored.startswith("sha256:"):
        digest = hashlib.sha256(given.encode("utf-8")).hexdigest()
        return hmac.compare_digest(stored[len("sha256:"):].lower().encode(), digest.encode())
    return hmac.compare_digest(stored.encode("utf-8"), given.encode("utf-8"))


def _parse_env(value: str, role: Role, source: str) -> dict[str, tuple[Role, str]]:
    out: dict[str, tuple[Role, str]] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, password = item.partition(":")
        if not sep or not name.strip() or not password:
            raise AccessConfigError(f"{source}: expected 'name:password', got {item.split(':')[0]!r}…")
        out[name.strip()] = (role, password)
    return out


def _parse_table(table: Any, role: Role, source: str) -> dict[str, tuple[Role, str]]:
    if not isinstance(table, Mapping):
        raise AccessConfigError(f"{source}: must be a table of name = password")
    out: dict[str, tuple[Role, str]] = {}
    for name, password in table.items():
        if not isinstance(password, str) or not password:
            raise AccessConfigError(f"{source}.{name}: password must be a non-empty string")
        out[str(name)] = (role, password)
    return out


def load_config(env: Mapping[str, str] | None = None, secrets: Mapping[str, Any] | None = None) -> AccessConfig:
    """Read users from `env` (default os.environ) and `secrets["access"]`.

    Operators win over viewers when a name appears twice. A malformed entry
    raises AccessConfigError naming where it is.
    """
    env = os.environ if env is None else env
    section = (secrets or {}).get("access") if secrets is not None else None
    if section is not None and not isinstance(section, Mapping):
        raise AccessConfigError("secrets [access]: must be a table")
    section = section or {}
    viewers = (_parse_table(section.get("viewers", {}), Role.VIEWER, "secrets access.viewers")
               | _parse_env(env.get("RIVYA_VIEWERS", ""), Role.VIEWER, "RIVYA_VIEWERS"))
    operators = (_parse_table(section.get("operators", {}), Role.OPERATOR, "secrets access.operators")
                 | _parse_env(env.get("RIVYA_OPERATORS", ""), Role.OPERATOR, "RIVYA_OPERATORS"))
    return AccessConfig(viewers | operators)  # operators last: a name listed as both is an operator
