"""The model catalogue: which models exist, what they accept and what they cost.

`data/catalog.toml` is read once into frozen dataclasses. Every field is checked
at load time; a malformed file raises `CatalogError` naming the file, the model
and the field, so a bad edit never reaches a running service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

from . import tomlfile
from .domain import Category, RivyaError, ValidationError

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "data" / "catalog.toml"

RUNTIMES = ("async_task", "sync", "chat")
PARAM_TYPES = ("int", "float", "str", "bool")
REFERENCE_KINDS = ("image", "audio", "video")
BILLING_TYPES = ("per_task", "per_second", "per_token")


class CatalogError(RivyaError):
    code = "catalog_invalid"
    user_correctable = False


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    max_length: int | None = None


@dataclass(frozen=True)
class ReferenceSpec:
    kind: str
    max_count: int
    max_size_bytes: int
    required: bool = False


@dataclass(frozen=True)
class Pricing:
    billing_type: str
    credits: int = 0  # per_task
    credits_per_second: float = 0.0  # per_second
    duration_param: str | None = None  # per_second
    input_per_1k: float = 0.0  # per_token
    output_per_1k: float = 0.0  # per_token


@dataclass(frozen=True)
class ProviderPrice:
    """What the provider bills us for one job of this model, in money (rivya_core.cost.CURRENCY):
    per second of run time, per output, or per 1,000 tokens (chat)."""

    unit: str  # per_second | per_output | per_token
    per_second: float = 0.0
    per_output: float = 0.0
    input_per_1k: float = 0.0
    output_per_1k: float = 0.0


PROVIDER_PRICE_UNITS = ("per_second", "per_output", "per_token")


@dataclass(frozen=True)
class Rules:
    """Model-specific extra rules (audio isolation: verified, bounded duration)."""

    verify_duration_kind: str | None = None
    max_duration_s: float | None = None
    duration_tolerance_s: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    id: str
    name: str
    category: str
    provider: str
    runtime: str
    direct_generation: bool
    prompt_min: int
    prompt_max: int
    params: tuple[ParamSpec, ...]
    references: tuple[ReferenceSpec, ...]
    pricing: Pricing
    rules: Rules = Rules()
    tools: tuple[str, ...] = ()
    tool_models: tuple[tuple[str, str], ...] = ()
    provider_price: ProviderPrice | None = None  # None: the catalogue does not say (cost unknown)

    @property
    def billing_type(self) -> str:
        return self.pricing.billing_type

    def param(self, name: str) -> ParamSpec | None:
        return next((p for p in self.params if p.name == name), None)

    def reference(self, kind: str) -> ReferenceSpec | None:
        return next((r for r in self.references if r.kind == kind), None)

    def base_credits(self, params: dict[str, Any] | None = None) -> int:
        """Credits for one task before any policy multiplier (0 for token-priced models)."""
        p = self.pricing
        if p.billing_type == "per_task":
            return p.credits
        if p.billing_type == "per_second":
            spec = self.param(p.duration_param or "")
            value = (params or {}).get(p.duration_param or "", spec.default if spec else 0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                value = spec.default if spec else 0
            return _ceil_product(p.credits_per_second, max(value, 0))
        return 0

    def chat_credits(self, prompt_tokens: int, completion_tokens: int) -> int:
        """Credits for a chat turn: prices are per 1,000 tokens, rounded up to whole credits."""
        for label, n in (("prompt_tokens", prompt_tokens), ("completion_tokens", completion_tokens)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValidationError(f"{label} must be a whole number of tokens, not {n!r}", code="tokens_invalid")
        p = self.pricing
        cost = (prompt_tokens * _exact(p.input_per_1k) + completion_tokens * _exact(p.output_per_1k)) / 1000
        return math.ceil(cost)


def _exact(x: float) -> Fraction:
    """Decimal-exact value of a price, so 10_000 tokens at 0.3/1k is 3 credits, not 4."""
    return Fraction(str(x)) if isinstance(x, float) else Fraction(x)


@lru_cache(maxsize=4096)
def _ceil_product(a: float, b: float) -> int:
    """ceil(a * b), decimal-exact: a per-second price times a duration. Remembered by value (equal
    numbers give equal Fractions), as a run prices the same few durations over and over."""
    return math.ceil(_exact(a) * _exact(b))


@dataclass(frozen=True)
class Catalog:
    models: tuple[ModelSpec, ...]
    source: str = "<memory>"

    def get(self, model_id: object) -> ModelSpec | None:
        if not isinstance(model_id, str):
            return None
        return self._by_id.get(model_id)

    @cached_property
    def _by_id(self) -> dict[str, ModelSpec]:
        """Each id's first model (what a scan in order would find); validation asks twice a task."""
        by_id: dict[str, ModelSpec] = {}
        for m in self.models:
            by_id.setdefault(m.id, m)
        return by_id

    def ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    def providers(self) -> tuple[str, ...]:
        return tuple(sorted({m.provider for m in self.models}))


def load_catalog(path: str | Path | None = None) -> Catalog:
    path = Path(path) if path is not None else DEFAULT_PATH
    raw = tomlfile.load(path, CatalogError, "catalogue")
    return Catalog(models=_parse_catalog(raw, str(path)), source=str(path))


@lru_cache(maxsize=1)
def default_catalog() -> Catalog:
    return load_catalog()


# --- loading: every field checked, every error names file, model and field --------

TOOL_CATEGORIES = {"image_generation": "image", "video_generation": "video", "audio_generation": "audio"}
_MODEL_KEYS = {
    "id",
    "name",
    "category",
    "provider",
    "runtime",
    "direct_generation",
    "prompt",
    "params",
    "references",
    "pricing",
    "rules",
    "tools",
    "tool_models",
    "provider_price",
}
_PRICING_KEYS = {
    "per_task": {"credits"},
    "per_second": {"credits_per_second", "duration_param"},
    "per_token": {"input_per_1k", "output_per_1k"},
}


class _Where:
    def __init__(self, source: str, model: str):
        self.source, self.model = source, model

    def error(self, field: str, reason: str) -> CatalogError:
        return CatalogError(f"{self.source}: model {self.model!r}: field {field!r}: {reason}")

    def table(self, value: Any, field: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(field, "must be a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            where = unknown[0] if field.startswith("<") else f"{field}.{unknown[0]}"
            raise self.error(where, f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def text(self, value: Any, field: str, choices: tuple[str, ...] | None = None) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, "must be a non-empty string")
        if choices is not None and value not in choices:
            raise self.error(field, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def flag(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(field, "must be true or false")
        return value

    def whole(self, value: Any, field: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(field, f"must be a whole number >= {minimum}")
        return value

    def number(self, value: Any, field: str, positive: bool = False) -> float:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or value < 0 or (positive and value == 0):
            raise self.error(field, "must be a " + ("positive" if positive else "non-negative") + " number")
        return value


def _parse_catalog(raw: dict[str, Any], source: str) -> tuple[ModelSpec, ...]:
    top = _Where(source, "-")
    top.table(raw, "<top level>", {"model"})
    entries = raw.get("model")
    if not isinstance(entries, list) or not entries:
        raise top.error("model", "the catalogue needs at least one [[model]] table")
    models: list[ModelSpec] = []
    for i, entry in enumerate(entries):
        given = entry.get("id") if isinstance(entry, dict) else None
        label = given if isinstance(given, str) else f"#{i + 1}"
        where = _Where(source, label)
        spec = _parse_model(where, entry)
        if any(m.id == spec.id for m in models):
            raise where.error("id", "duplicate model id")
        models.append(spec)
    by_id = {m.id: m for m in models}
    for m in models:
        for tool, target in m.tool_models:
            found = by_id.get(target)
            if found is None or found.category != TOOL_CATEGORIES[tool] or found.runtime != "async_task":
                raise _Where(source, m.id).error(
                    f"tool_models.{tool}", f"{target!r} is not an async {TOOL_CATEGORIES[tool]} model in this catalogue"
                )
    return tuple(models)


def _parse_model(w: _Where, entry: Any) -> ModelSpec:
    d = w.table(entry, "<model>", _MODEL_KEYS)
    for key in ("id", "name", "category", "provider", "runtime", "direct_generation", "prompt", "pricing"):
        if key not in d:
            raise w.error(key, "is required")
    category = w.text(d["category"], "category", tuple(c.value for c in Category))
    runtime = w.text(d["runtime"], "runtime", RUNTIMES)
    if (category == "chat") != (runtime == "chat"):
        raise w.error("runtime", "chat models, and only chat models, use the 'chat' runtime")
    prompt = w.table(d["prompt"], "prompt", {"min", "max"})
    pmin, pmax = w.whole(prompt.get("min", 1), "prompt.min"), w.whole(prompt.get("max"), "prompt.max", 1)
    if pmin > pmax:
        raise w.error("prompt.min", f"{pmin} is greater than prompt.max {pmax}")
    raw_params = d.get("params", {})
    if not isinstance(raw_params, dict):
        raise w.error("params", "must be a table of [model.params.<name>] tables")
    params = tuple(_parse_param(w, name, v) for name, v in raw_params.items())
    references = _parse_references(w, d.get("references", []))
    pricing = _parse_pricing(w, d["pricing"], params)
    if (pricing.billing_type == "per_token") != (category == "chat"):
        raise w.error("pricing.type", "chat models, and only chat models, are priced per token")
    tools = d.get("tools", [])
    if not isinstance(tools, list) or any(t not in TOOL_CATEGORIES for t in tools) or len(set(tools)) != len(tools):
        raise w.error("tools", f"must be a list of distinct tools from {', '.join(TOOL_CATEGORIES)}")
    if tools and category != "chat":
        raise w.error("tools", "only chat models call tools")
    tool_models = w.table(d.get("tool_models", {}), "tool_models", set(tools))
    return ModelSpec(
        id=w.text(d["id"], "id"),
        name=w.text(d["name"], "name"),
        category=category,
        provider=w.text(d["provider"], "provider"),
        runtime=runtime,
        direct_generation=w.flag(d["direct_generation"], "direct_generation"),
        prompt_min=pmin,
        prompt_max=pmax,
        params=params,
        references=references,
        pricing=pricing,
        rules=_parse_rules(w, d.get("rules", {}), references),
        tools=tuple(tools),
        tool_models=tuple((t, w.text(m, f"tool_models.{t}")) for t, m in tool_models.items()),
        provider_price=_parse_provider_price(w, d.get("provider_price"), category),
    )


_PROVIDER_PRICE_KEYS = {
    "per_second": {"per_second"},
    "per_output": {"per_output"},
    "per_token": {"input_per_1k", "output_per_1k"},
}


def _parse_provider_price(w: _Where, raw: Any, category: str) -> ProviderPrice | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise w.error("provider_price", "must be a table")
    unit = w.text(raw.get("unit"), "provider_price.unit", PROVIDER_PRICE_UNITS)
    d = w.table(raw, "provider_price", _PROVIDER_PRICE_KEYS[unit] | {"unit"})
    if (unit == "per_token") != (category == "chat"):
        raise w.error("provider_price.unit", "chat models, and only chat models, are billed per token upstream")
    values = {}
    for key in sorted(_PROVIDER_PRICE_KEYS[unit]):
        if key not in d:
            raise w.error(f"provider_price.{key}", f"is required for {unit} provider prices")
        values[key] = float(w.number(d[key], f"provider_price.{key}"))
    return ProviderPrice(unit, **values)


def _typed(w: _Where, ptype: str, value: Any, field: str) -> Any:
    if ptype == "int" and not isinstance(value, bool) and isinstance(value, int):
        return value
    if ptype == "float" and not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if (ptype == "str" and isinstance(value, str)) or (ptype == "bool" and isinstance(value, bool)):
        return value
    raise w.error(field, f"{value!r} is not a valid {ptype}")


def _parse_param(w: _Where, name: str, raw: Any) -> ParamSpec:
    f = f"params.{name}"
    d = w.table(raw, f, {"type", "default", "min", "max", "choices", "max_length"})
    ptype = w.text(d.get("type"), f"{f}.type", PARAM_TYPES)
    if "default" not in d:
        raise w.error(f"{f}.default", "is required")
    default = _typed(w, ptype, d["default"], f"{f}.default")
    numeric = ptype in ("int", "float")
    bounds: dict[str, Any] = {}
    for key in ("min", "max"):
        if key in d:
            if not numeric:
                raise w.error(f"{f}.{key}", f"only numeric parameters have a {key}")
            bounds[key] = _typed(w, ptype, d[key], f"{f}.{key}")
    if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
        raise w.error(f"{f}.min", "is greater than max")
    if ("min" in bounds and default < bounds["min"]) or ("max" in bounds and default > bounds["max"]):
        raise w.error(f"{f}.default", f"{default!r} is outside min/max")
    choices = None
    if "choices" in d:
        if ptype == "bool" or not isinstance(d["choices"], list) or not d["choices"]:
            raise w.error(f"{f}.choices", "must be a non-empty list (not for bool parameters)")
        choices = tuple(_typed(w, ptype, c, f"{f}.choices") for c in d["choices"])
        keys = [c.casefold() if ptype == "str" else c for c in choices]
        if len(set(keys)) != len(keys):
            raise w.error(f"{f}.choices", "has duplicates")
        if default not in choices:
            raise w.error(f"{f}.default", f"{default!r} is not one of the choices")
    max_length = None
    if "max_length" in d:
        if ptype != "str":
            raise w.error(f"{f}.max_length", "only string parameters have a max_length")
        max_length = w.whole(d["max_length"], f"{f}.max_length", 1)
        if len(default) > max_length:
            raise w.error(f"{f}.default", "is longer than max_length")
    return ParamSpec(name, ptype, default, bounds.get("min"), bounds.get("max"), choices, max_length)


def _parse_references(w: _Where, raw: Any) -> tuple[ReferenceSpec, ...]:
    if not isinstance(raw, list):
        raise w.error("references", "must be a list of [[model.references]] tables")
    out: list[ReferenceSpec] = []
    for i, item in enumerate(raw):
        f = f"references[{i}]"
        d = w.table(item, f, {"kind", "max_count", "max_size_bytes", "required"})
        kind = w.text(d.get("kind"), f"{f}.kind", REFERENCE_KINDS)
        if any(r.kind == kind for r in out):
            raise w.error(f"{f}.kind", f"{kind!r} is listed twice")
        out.append(
            ReferenceSpec(
                kind,
                w.whole(d.get("max_count"), f"{f}.max_count", 1),
                w.whole(d.get("max_size_bytes"), f"{f}.max_size_bytes", 1),
                w.flag(d.get("required", False), f"{f}.required"),
            )
        )
    return tuple(out)


def _parse_pricing(w: _Where, raw: Any, params: tuple[ParamSpec, ...]) -> Pricing:
    if not isinstance(raw, dict):
        raise w.error("pricing", "must be a table")
    btype = w.text(raw.get("type"), "pricing.type", BILLING_TYPES)
    d = w.table(raw, "pricing", _PRICING_KEYS[btype] | {"type"})
    for key in sorted(_PRICING_KEYS[btype]):
        if key not in d:
            raise w.error(f"pricing.{key}", f"is required for {btype} pricing")
    if btype == "per_task":
        return Pricing(btype, credits=w.whole(d["credits"], "pricing.credits"))
    if btype == "per_second":
        name = w.text(d["duration_param"], "pricing.duration_param")
        if not any(p.name == name and p.type in ("int", "float") for p in params):
            raise w.error("pricing.duration_param", f"{name!r} is not a numeric parameter of this model")
        return Pricing(
            btype,
            credits_per_second=w.number(d["credits_per_second"], "pricing.credits_per_second", positive=True),
            duration_param=name,
        )
    return Pricing(
        btype,
        input_per_1k=w.number(d["input_per_1k"], "pricing.input_per_1k"),
        output_per_1k=w.number(d["output_per_1k"], "pricing.output_per_1k"),
    )


def _parse_rules(w: _Where, raw: Any, references: tuple[ReferenceSpec, ...]) -> Rules:
    d = w.table(raw, "rules", {"verify_duration_kind", "max_duration_s", "duration_tolerance_s"})
    if not d:
        return Rules()
    kind = w.text(d.get("verify_duration_kind"), "rules.verify_duration_kind", REFERENCE_KINDS)
    if not any(r.kind == kind for r in references):
        raise w.error("rules.verify_duration_kind", f"the model accepts no {kind} reference")
    return Rules(
        kind,
        w.number(d.get("max_duration_s"), "rules.max_duration_s", positive=True),
        w.number(d.get("duration_tolerance_s", 1.0), "rules.duration_tolerance_s"),
    )
