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

With no user configured anywhere, access control is off ("open mode"):
everybody is an operator, and the dashboard answers only connections from this
machine (`local_client`). Passwords are compared in constant time
(hmac.compare_digest).

Which databases a session may read (`choose_source`): in open mode any URL.
With access control on, everybody may read the default database, the data
sources an operator configured and the simulation databases (`*.db` files
directly under `data/` or the runs folder); a free-form URL only an operator,
and only when `allow_any_url` is set:

    RIVYA_DATA_SOURCES='{"team": "postgresql://reader@db.internal/rivya"}'
    RIVYA_ALLOW_ANY_URL=1

    # .streamlit/secrets.toml
    [access]
    allow_any_url = true
    [access.sources]
    team = "postgresql://reader@db.internal/rivya"
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from .domain import RivyaError


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"


class AccessConfigError(RivyaError):
    code = "access_config_invalid"


class SourceRefused(RivyaError):
    """A data source this session may not read (the message never repeats the requested URL)."""

    code = "data_source_refused"


READ = "read"
ACT = "act"
_GRANTS = {Role.VIEWER: frozenset({READ}), Role.OPERATOR: frozenset({READ, ACT})}


def allowed(role: Role | None, action: str) -> bool:
    """True when `role` may do `action` (READ or ACT)."""
    return role is not None and action in _GRANTS[Role(role)]


@dataclass(frozen=True)
class AccessConfig:
    users: dict[str, tuple[Role, str]] = field(default_factory=dict)  # name -> (role, stored password)
    sources: dict[str, str] = field(default_factory=dict)  # name -> URL of a configured data source
    allow_any_url: bool = False  # operators may also read a free-form URL

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
        return hmac.compare_digest(stored[len("sha256:") :].lower().encode(), digest.encode())
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


def _parse_sources(table: Any, source: str) -> dict[str, str]:
    if not isinstance(table, Mapping):
        raise AccessConfigError(f"{source}: must be a table (JSON object) of name = database URL")
    out: dict[str, str] = {}
    for name, url in table.items():
        if not isinstance(url, str) or not url.strip() or not str(name).strip():
            raise AccessConfigError(f"{source}.{name}: must be a non-empty database URL")
        out[str(name).strip()] = url.strip()
    return out


def _flag(value: Any, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise AccessConfigError(f"{source}: expected true or false")


def load_config(env: Mapping[str, str] | None = None, secrets: Mapping[str, Any] | None = None) -> AccessConfig:
    """Read users, data sources and allow_any_url from `env` (default os.environ) and
    `secrets["access"]` (see the module doc).

    Operators win over viewers when a name appears twice. A malformed entry
    raises AccessConfigError naming where it is.
    """
    env = os.environ if env is None else env
    section = (secrets or {}).get("access") if secrets is not None else None
    if section is not None and not isinstance(section, Mapping):
        raise AccessConfigError("secrets [access]: must be a table")
    section = section or {}
    viewers = _parse_table(section.get("viewers", {}), Role.VIEWER, "secrets access.viewers") | _parse_env(
        env.get("RIVYA_VIEWERS", ""), Role.VIEWER, "RIVYA_VIEWERS"
    )
    operators = _parse_table(section.get("operators", {}), Role.OPERATOR, "secrets access.operators") | _parse_env(
        env.get("RIVYA_OPERATORS", ""), Role.OPERATOR, "RIVYA_OPERATORS"
    )
    users = viewers | operators  # operators last: a name listed as both is an operator
    sources = _parse_sources(section.get("sources", {}), "secrets access.sources")
    allow_any_url = _flag(section.get("allow_any_url", False), "secrets access.allow_any_url")
    if env.get("RIVYA_DATA_SOURCES", "").strip():
        try:
            table = json.loads(env["RIVYA_DATA_SOURCES"])
        except ValueError:
            raise AccessConfigError('RIVYA_DATA_SOURCES: expected a JSON object {"name": "database URL"}') from None
        sources |= _parse_sources(table, "RIVYA_DATA_SOURCES")
    if "RIVYA_ALLOW_ANY_URL" in env:
        allow_any_url = _flag(env["RIVYA_ALLOW_ANY_URL"], "RIVYA_ALLOW_ANY_URL")
    return AccessConfig(users, sources, allow_any_url)


# --- which databases a session may read ------------------------------------------------------


def may_type_url(role: Role | None, cfg: AccessConfig) -> bool:
    """True when this role may read a free-form database URL: anyone in open mode (served on
    localhost only), otherwise an operator when `allow_any_url` is set."""
    return not cfg.enabled or (role == Role.OPERATOR and cfg.allow_any_url)


def _same_url(a: str, b: str) -> bool:
    from .stores.db import normalize_url

    try:
        return normalize_url(a) == normalize_url(b)
    except RivyaError:
        return False


def simulation_file(requested: str, sim_dirs: Iterable[Path]) -> Path | None:
    """The resolved file when `requested` (a SQLite URL or path) names an existing `*.db` file directly
    inside one of `sim_dirs` (symbolic links resolved first, so none leads out), else None."""
    from .stores.db import sqlite_path

    try:
        path = sqlite_path(requested)
    except Exception:  # noqa: BLE001 - a URL that does not parse names no simulation file
        return None
    if path is None:
        return None
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    homes = {Path(d).resolve() for d in sim_dirs}
    return resolved if resolved.suffix == ".db" and resolved.is_file() and resolved.parent in homes else None


def choose_source(
    requested: str, role: Role | None, cfg: AccessConfig, *, default: str, sim_dirs: Iterable[Path]
) -> str:
    """The database URL a session with `role` reads when it asks for `requested` (a URL, a
    SQLite path or a configured source's name); raises SourceRefused when it may not."""
    requested = (requested or "").strip()
    if not requested or _same_url(requested, default):
        return default
    if not cfg.enabled:
        return requested
    if requested in cfg.sources:
        return cfg.sources[requested]
    for url in cfg.sources.values():
        if _same_url(requested, url):
            return url
    found = simulation_file(requested, sim_dirs)
    if found is not None:
        return f"sqlite:///{found}"
    if may_type_url(role, cfg):
        return requested
    raise SourceRefused(
        "that database is not among the data sources this dashboard offers (the default "
        "database, the configured sources and the simulation databases under data/); "
        + (
            "free-form URLs are switched off (allow_any_url)"
            if role == Role.OPERATOR
            else "only an operator may read a free-form URL"
        )
    )


def local_client(ip_address: str | None) -> bool:
    """True for a connection from this machine (no address known, or a loopback one): open mode
    answers only these."""
    if ip_address is None:
        return True
    try:
        ip = ipaddress.ip_address(ip_address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback
