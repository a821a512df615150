"""Request validation: the guide's step 1, before anything is written.

`validate(catalog, request)` checks, in the guide's order: the model exists,
direct generation is enabled, the runtime is async-task, the prompt length, the
parameters (defaults filled, types coerced, choices canonical, ranges), the
reference files (kind, count, size), then model-specific rules (audio isolation:
a verified duration within the limit). It returns a `NormalizedRequest` or
raises `ValidationError` with a stable code; any input whatsoever gets one of
the two. Normalizing a normalized request changes nothing.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .catalog import Catalog, ModelSpec, ParamSpec
from .domain import ValidationError

VALIDATION_CODES: dict[str, str] = {
    "request_malformed": "the request is not a {model, prompt, params, references} record",
    "model_not_found": "no model with that id in the catalogue",
    "direct_generation_disabled": "the model cannot be started directly",
    "runtime_not_async": "the model does not run as an async generation task (sync or chat)",
    "runtime_not_chat": "the model is not a chat model",
    "prompt_invalid": "the prompt is not text, or holds control characters or broken unicode",
    "prompt_empty": "the prompt is empty but the model needs one",
    "prompt_too_short": "the prompt is shorter than the model's minimum",
    "prompt_too_long": "the prompt is longer than the model's maximum",
    "param_unknown": "a setting the model does not have",
    "param_invalid": "a setting of the wrong type, not one of its choices, or too long",
    "param_out_of_range": "a numeric setting below its minimum or above its maximum",
    "reference_invalid": "a reference file description that is not well formed",
    "reference_not_accepted": "a reference file of a kind the model does not accept",
    "too_many_references": "more reference files of one kind than the model accepts",
    "reference_missing": "a reference file the model requires was not attached",
    "reference_too_large": "a reference file larger than the model accepts",
    "duration_unverified": "a file whose duration must be measured has not been measured",
    "duration_too_long": "a file longer than the model's duration limit",
    "duration_mismatch": "a file whose declared duration disagrees with the measured one",
}
NOT_USER_CORRECTABLE = frozenset(
    {"request_malformed", "model_not_found", "direct_generation_disabled", "runtime_not_async", "runtime_not_chat"}
)

REQUEST_KEYS = ("model", "prompt", "params", "references")
REFERENCE_KEYS = ("kind", "name", "size_bytes", "declared_duration_s", "measured_duration_s")
MAX_NAME_LENGTH = 255
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxlevel = 2


@dataclass(frozen=True)
class Reference:
    """An uploaded file: measured_duration_s is None until the upload check has measured it."""

    kind: str
    name: str = ""
    size_bytes: int = 0
    declared_duration_s: float | None = None
    measured_duration_s: float | None = None


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    prompt: str = ""
    params: Mapping[str, Any] = field(default_factory=dict, hash=False)
    references: tuple[Reference, ...] = ()


@dataclass(frozen=True)
class NormalizedRequest:
    spec: ModelSpec = field(repr=False)
    model: str
    category: str
    provider: str
    prompt: str
    params: dict[str, Any] = field(hash=False)
    references: tuple[Reference, ...]
    billing_type: str
    base_credits: int


def show(value: Any) -> str:
    """A short, always-printable rendering of any user value for messages."""
    try:
        return _repr.repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ or a number too long to print
        return f"<{type(value).__name__}>"


def reject(code: str, message: str) -> ValidationError:
    return ValidationError(message, code=code, user_correctable=code not in NOT_USER_CORRECTABLE)


def validate(catalog: Catalog, request: Any) -> NormalizedRequest:
    model_id, prompt, params, refs = _unpack(request)
    spec = _check_model(catalog, model_id)
    prompt = _check_prompt(spec, prompt)
    norm_params = _check_params(spec, params)
    references = _check_references(spec, refs)
    _check_rules(spec, references)
    return NormalizedRequest(
        spec,
        spec.id,
        spec.category,
        spec.provider,
        prompt,
        norm_params,
        references,
        spec.billing_type,
        spec.base_credits(norm_params),
    )


def validate_chat_model(catalog: Catalog, model_id: Any) -> ModelSpec:
    spec = catalog.get(model_id)
    if spec is None:
        raise reject("model_not_found", f"There is no chat model called {show(model_id)}.")
    if spec.runtime != "chat":
        raise reject("runtime_not_chat", f"{spec.name} is a {spec.category} model, not a chat model.")
    return spec


# --- the steps, in the guide's order ---------------------------------------------


def _unpack(request: Any) -> tuple[Any, Any, Any, Any]:
    if isinstance(request, GenerationRequest):
        return request.model, request.prompt, request.params, request.references
    if not isinstance(request, Mapping):
        raise reject(
            "request_malformed",
            f"The request must be a record with a model and a prompt, not {type(request).__name__}.",
        )
    unknown = [k for k in request if k not in REQUEST_KEYS]
    if unknown:
        raise reject(
            "request_malformed",
            f"The request has an unexpected field {show(unknown[0])}; expected only {', '.join(REQUEST_KEYS)}.",
        )
    return request.get("model"), request.get("prompt"), request.get("params"), request.get("references")


def _check_model(catalog: Catalog, model_id: Any) -> ModelSpec:
    spec = catalog.get(model_id)
    if spec is None:
        if model_id is None or model_id == "":
            raise reject("model_not_found", "No model was chosen for this request.")
        raise reject("model_not_found", f"There is no model called {show(model_id)} in the catalogue.")
    if not spec.direct_generation:
        raise reject(
            "direct_generation_disabled",
            f"{spec.name} cannot be started directly; it is not open for direct generation.",
        )
    if spec.runtime != "async_task":
        how = "in a chat session" if spec.runtime == "chat" else "instantly (sync), not as a background task"
        raise reject("runtime_not_async", f"{spec.name} runs {how}; it cannot be submitted as a generation task.")
    return spec


def _check_prompt(spec: ModelSpec, prompt: Any) -> str:
    if prompt is None:
        prompt = ""
    if not isinstance(prompt, str):
        raise reject("prompt_invalid", f"The prompt must be text, not {type(prompt).__name__}.")
    prompt = prompt.strip()
    if not prompt and spec.prompt_min > 0:
        raise reject("prompt_empty", f"The prompt is empty; {spec.name} needs a description of what to make.")
    if len(prompt) > spec.prompt_max:
        raise reject(
            "prompt_too_long",
            f"The prompt has {len(prompt)} characters; {spec.name} accepts at most "
            f"{spec.prompt_max}. Please shorten it.",
        )
    if len(prompt) < spec.prompt_min:
        raise reject(
            "prompt_too_short",
            f"The prompt has {len(prompt)} characters; {spec.name} needs at least {spec.prompt_min}.",
        )
    if _BAD_CHARS.search(prompt):
        raise reject(
            "prompt_invalid", "The prompt contains control characters or broken unicode; please retype it without them."
        )
    return prompt


def _check_params(spec: ModelSpec, params: Any) -> dict[str, Any]:
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise reject(
            "request_malformed", f"The settings must be a record of name and value, not {type(params).__name__}."
        )
    known = {p.name for p in spec.params}
    for key in params:
        if key not in known:
            names = ", ".join(sorted(known)) or "none"
            raise reject("param_unknown", f"{spec.name} has no setting {show(key)} (its settings: {names}).")
    return {p.name: _coerce(p, params.get(p.name)) for p in spec.params}


def _coerce(p: ParamSpec, value: Any) -> Any:
    if value is None:
        return p.default
    converted = {"int": _as_int, "float": _as_float, "str": _as_str, "bool": _as_bool}[p.type](value)
    if converted is None:
        raise reject("param_invalid", f"The setting {p.name!r} must be {_kind(p)}; got {show(value)}.")
    if p.choices is not None:
        canon = {(c.casefold() if isinstance(c, str) else c): c for c in p.choices}
        key = converted.casefold() if isinstance(converted, str) else converted
        if key not in canon:
            allowed = ", ".join(str(c) for c in p.choices)
            raise reject("param_invalid", f"The setting {p.name!r} must be one of {allowed}; got {show(value)}.")
        return canon[key]
    number = converted if isinstance(converted, (int, float)) and not isinstance(converted, bool) else None
    if number is not None and ((p.min is not None and number < p.min) or (p.max is not None and number > p.max)):
        raise reject("param_out_of_range", f"The setting {p.name!r} must be {_bounds(p)}; got {show(value)}.")
    if p.max_length is not None and isinstance(converted, str) and len(converted) > p.max_length:
        raise reject(
            "param_invalid",
            f"The setting {p.name!r} can be at most {p.max_length} characters; it has {len(converted)}.",
        )
    return converted


def _bounds(p: ParamSpec) -> str:
    if p.min is not None and p.max is not None:
        return f"between {p.min} and {p.max}"
    return f"at least {p.min}" if p.min is not None else f"at most {p.max}"


def _kind(p: ParamSpec) -> str:
    return {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false"}[p.type]


def _as_int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and len(v) <= 64:
        try:
            return int(v.strip())
        except ValueError:
            pass
    f = _as_float(v)
    return int(f) if f is not None and f.is_integer() else None


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    try:
        if isinstance(v, str):
            v = v.strip()
            if len(v) > 64:
                return None
            f = float(v)
        elif isinstance(v, (int, float)):
            f = float(v)
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return f if math.isfinite(f) else None


def _as_str(v: Any) -> str | None:
    if not isinstance(v, str) or _BAD_CHARS.search(v):
        return None
    return v.strip()


def _as_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and len(v) < 16:
        word = v.strip().casefold()
        return True if word in _TRUE else False if word in _FALSE else None
    return None


def _check_references(spec: ModelSpec, refs: Any) -> tuple[Reference, ...]:
    if refs is None:
        refs = ()
    if not isinstance(refs, (list, tuple)):
        raise reject("request_malformed", f"The reference files must be a list, not {type(refs).__name__}.")
    out = tuple(_reference(i, r) for i, r in enumerate(refs))
    for ref in out:
        if spec.reference(ref.kind) is None:
            kinds = ", ".join(r.kind for r in spec.references) or "no files"
            raise reject(
                "reference_not_accepted", f"{spec.name} does not accept {ref.kind} files (it accepts: {kinds})."
            )
    for rs in spec.references:
        count = sum(1 for r in out if r.kind == rs.kind)
        if count > rs.max_count:
            raise reject(
                "too_many_references",
                f"{spec.name} accepts at most {rs.max_count} {rs.kind} file(s); {count} were attached.",
            )
        if rs.required and count == 0:
            raise reject("reference_missing", f"{spec.name} needs an uploaded {rs.kind} file; please attach one.")
    for ref in out:
        limit = spec.reference(ref.kind).max_size_bytes  # type: ignore[union-attr]
        if ref.size_bytes > limit:
            raise reject(
                "reference_too_large",
                f"The {ref.kind} file {ref.name!r} is {_mb(ref.size_bytes)}; "
                f"{spec.name} accepts files up to {_mb(limit)}.",
            )
    return out


def _mb(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB" if n < 10**15 else "far too large"


def _reference(i: int, r: Any) -> Reference:
    def bad(why: str) -> ValidationError:
        return reject("reference_invalid", f"Reference file #{i + 1} is not valid: {why}.")

    if isinstance(r, Reference):
        r = {k: getattr(r, k) for k in REFERENCE_KEYS}
    if not isinstance(r, Mapping):
        raise bad(f"expected a file description, got {type(r).__name__}")
    unknown = [k for k in r if k not in REFERENCE_KEYS]
    if unknown:
        raise bad(f"unexpected field {show(unknown[0])}")
    kind, name = r.get("kind"), r.get("name", "")
    if not isinstance(kind, str) or not kind.strip() or len(kind) > 32:
        raise bad("its kind must be image, audio or video")
    if name is None:
        name = ""
    if not isinstance(name, str) or _BAD_CHARS.search(name) or len(name.strip()) > MAX_NAME_LENGTH:
        raise bad(f"its name must be text of at most {MAX_NAME_LENGTH} characters")
    size = _as_int(r.get("size_bytes", 0))
    if size is None or size < 0:
        raise bad("its size must be a whole, non-negative number of bytes")
    durations = []
    for key in ("declared_duration_s", "measured_duration_s"):
        raw = r.get(key)
        d = None if raw is None else _as_float(raw)
        if raw is not None and (d is None or d < 0):
            raise bad(f"{key} must be a non-negative number of seconds")
        durations.append(d)
    return Reference(kind.strip().casefold(), name.strip(), size, durations[0], durations[1])


def _check_rules(spec: ModelSpec, references: tuple[Reference, ...]) -> None:
    rules = spec.rules
    if rules.verify_duration_kind is None:
        return
    limit = rules.max_duration_s
    for ref in references:
        if ref.kind != rules.verify_duration_kind:
            continue
        label = f"The {ref.kind} file {ref.name!r}" if ref.name else f"The {ref.kind} file"
        if ref.declared_duration_s is not None and limit is not None and ref.declared_duration_s > limit:
            raise reject(
                "duration_too_long",
                f"{label} is {ref.declared_duration_s:g} s long; {spec.name} accepts at most {limit:g} s.",
            )
        if ref.measured_duration_s is None:
            raise reject(
                "duration_unverified",
                f"{label} has not had its duration verified yet; wait for the "
                "upload check to finish, or upload it again.",
            )
        if limit is not None and ref.measured_duration_s > limit:
            raise reject(
                "duration_too_long",
                f"{label} measures {ref.measured_duration_s:g} s; {spec.name} accepts at most {limit:g} s.",
            )
        if (
            ref.declared_duration_s is not None
            and abs(ref.declared_duration_s - ref.measured_duration_s) > rules.duration_tolerance_s
        ):
            raise reject(
                "duration_mismatch",
                f"{label} was declared as {ref.declared_duration_s:g} s but measures "
                f"{ref.measured_duration_s:g} s; please upload it again.",
            )
