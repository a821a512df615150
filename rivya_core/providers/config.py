"""Which client serves which catalogue provider: configuration, never printed.

Sources, first found wins:

1. `RIVYA_PROVIDERS`: a path to a TOML file, or the TOML text itself;
2. `[providers.*]` tables in `.streamlit/secrets.toml` (the dashboard's secrets);
3. nothing: no live clients (actions that must ask a provider are refused).

One table per catalogue provider:

    [providers.lumen]
    api = "replicate"                         # replicate | fal
    base_url = "https://api.replicate.com/v1" # optional: the API's default
    token = "r8_..."                          # replicate: API token (fal: `key`)
    webhook_url = "https://rivya.example.com/webhooks/lumen"  # optional: no webhooks, polling only
    webhook_secrets = ["whsec_..."]           # replicate: Standard Webhooks secrets, newest first
                                              # (none: read from GET {base_url}/webhooks/default/secret)
    models = { "lumen-flash" = "black-forest-labs/flux-schnell" }  # optional catalogue -> upstream
    timeout_s = 30                            # optional
    retries = 2                               # optional

    [providers.kinetica]
    api = "fal"
    key = "..."                               # fal API key
    app = "fal-ai/kling-video"                # the fal application requests queue under
    public_keys = ["<base64url ED25519 key>"] # fal: optional static webhook keys (JWKS `x`)
    jwks_url = "https://rest.fal.ai/.well-known/jwks.json"  # fal: the published keys, fetched and
                                              # cached 24 h; the default when base_url is fal's own
                                              # (or unset); "" turns fetching off

Unknown keys, a missing token, a bad URL are refused with ProviderConfigError naming
the source, the provider and the key, never a value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .. import tomlfile, webhooks
from ..domain import ValidationError
from .fal import DEFAULT_BASE_URL as FAL_DEFAULT_BASE_URL
from .fal import FalClient
from .keys import FAL_JWKS_URL
from .replicate import ReplicateClient

PROVIDERS_ENV = "RIVYA_PROVIDERS"
SECRETS_TOML = Path(__file__).resolve().parent.parent.parent / ".streamlit" / "secrets.toml"
APIS = ("replicate", "fal")
_COMMON = {"api", "base_url", "webhook_url", "models", "timeout_s", "retries"}
_KEYS = {
    "replicate": _COMMON | {"token", "webhook_secrets"},
    "fal": _COMMON | {"key", "app", "public_keys", "jwks_url"},
}
_SECRET_FIELDS = ("token", "key", "webhook_secrets", "public_keys")


class ProviderConfigError(ValidationError):
    code = "providers_invalid"
    user_correctable = True


@dataclass(frozen=True)
class ProviderSettings:
    """One catalogue provider's client settings. Its repr shows no credential."""

    name: str
    api: str
    base_url: str | None = None
    webhook_url: str | None = None
    models: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 30.0
    retries: int = 2
    app: str | None = None
    token: str = field(default="", repr=False)
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    public_keys: tuple[str, ...] = field(default=(), repr=False)
    jwks_url: str | None = None

    def client(self, transport: httpx.BaseTransport | None = None) -> ReplicateClient | FalClient:
        common: dict[str, Any] = {
            "webhook_url": self.webhook_url,
            "models": self.models,
            "timeout_s": self.timeout_s,
            "retries": self.retries,
            "transport": transport,
        }
        if self.base_url:
            common["base_url"] = self.base_url
        if self.api == "replicate":
            return ReplicateClient(self.name, self.token, webhook_secrets=self.webhook_secrets, **common)
        return FalClient(
            self.name,
            self.token,
            app=self.app or self.name,
            public_keys=self.public_keys,
            jwks_url=self.jwks_url,
            **common,
        )


def parse_providers(doc: Mapping[str, Any], source: str) -> dict[str, ProviderSettings]:
    """The `[providers.*]` tables of a parsed TOML document."""
    tables = doc.get("providers", {})
    if not isinstance(tables, dict):
        raise ProviderConfigError(f"{source}: `providers` must be a table of provider tables")
    return {str(name): _settings(str(name), t, source) for name, t in tables.items()}


def _settings(name: str, t: Any, source: str) -> ProviderSettings:
    where = f"{source}: [providers.{name}]"
    if not isinstance(t, dict):
        raise ProviderConfigError(f"{where} must be a table")
    api = t.get("api")
    if api not in APIS:
        raise ProviderConfigError(f"{where} api must be one of {', '.join(APIS)}")
    unknown = sorted(set(t) - _KEYS[api])
    if unknown:
        raise ProviderConfigError(f"{where} has unknown key(s): {', '.join(unknown)}")
    cred = "token" if api == "replicate" else "key"
    token = t.get(cred)
    if not isinstance(token, str) or not token.strip():
        raise ProviderConfigError(f"{where} needs `{cred}` (a non-empty string)")
    for key in ("base_url", "webhook_url", "jwks_url"):
        url = t.get(key)
        if key == "jwks_url" and url == "":
            continue
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise ProviderConfigError(f"{where} {key} must be an http(s) URL")
    models = t.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(v, str) and v for v in models.values()):
        raise ProviderConfigError(f"{where} models must map catalogue model ids to upstream names")
    lists = {}
    for key in ("webhook_secrets", "public_keys"):
        value = t.get(key, [])
        if not isinstance(value, list) or not all(isinstance(s, str) and s for s in value):
            raise ProviderConfigError(f"{where} {key} must be a list of strings")
        lists[key] = tuple(value)
    for key, check in (("webhook_secrets", webhooks._key), ("public_keys", webhooks.ed25519_key_bytes)):
        try:
            for value in lists[key]:
                check(value)
        except webhooks.WebhookError as exc:
            raise ProviderConfigError(f"{where} {key}: {exc.message}") from None
    timeout, retries = t.get("timeout_s", 30.0), t.get("retries", 2)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 600:
        raise ProviderConfigError(f"{where} timeout_s must be a number of seconds in (0, 600]")
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        raise ProviderConfigError(f"{where} retries must be a whole number from 0 to 10")
    app = t.get("app")
    if app is not None and (not isinstance(app, str) or not app.strip("/")):
        raise ProviderConfigError(f"{where} app must be a fal application id such as owner/name")
    jwks_url = t.get("jwks_url")
    if api == "fal" and jwks_url is None and _is_fal_host(t.get("base_url")):
        jwks_url = FAL_JWKS_URL
    return ProviderSettings(
        name=name,
        api=api,
        base_url=t.get("base_url"),
        webhook_url=t.get("webhook_url"),
        models=dict(models),
        timeout_s=float(timeout),
        retries=retries,
        app=app,
        token=token.strip(),
        jwks_url=jwks_url or None,
        **lists,
    )


def _is_fal_host(base_url: str | None) -> bool:
    """fal's own queue (or no base URL: the default): its published JWKS applies. Anything else
    (a proxy, a test double) names its jwks_url itself or uses static keys."""
    return base_url is None or httpx.URL(base_url).host == httpx.URL(FAL_DEFAULT_BASE_URL).host


def load_providers(
    environ: Mapping[str, str] = os.environ, secrets_toml: Path = SECRETS_TOML
) -> dict[str, ProviderSettings]:
    """The configured providers (empty when nothing is configured)."""
    raw = environ.get(PROVIDERS_ENV, "").strip()
    if raw:
        if "[" in raw and "\n" in raw:  # the TOML text itself
            return parse_providers(tomlfile.parse(raw, PROVIDERS_ENV, ProviderConfigError), PROVIDERS_ENV)
        return parse_providers(tomlfile.load(raw, ProviderConfigError, "providers"), raw)
    if secrets_toml.is_file():
        return parse_providers(tomlfile.load(secrets_toml, ProviderConfigError, "secrets"), str(secrets_toml))
    return {}


def build_clients(
    settings: Mapping[str, ProviderSettings], transport: httpx.BaseTransport | None = None
) -> dict[str, ReplicateClient | FalClient]:
    return {name: s.client(transport) for name, s in settings.items()}
