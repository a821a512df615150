"""Request validation: every rejection code, normalization, idempotence, and any input survives."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rivya_core.catalog import Catalog, default_catalog
from rivya_core.domain import ValidationError
from rivya_core.validation import (
    NOT_USER_CORRECTABLE,
    VALIDATION_CODES,
    GenerationRequest,
    NormalizedRequest,
    Reference,
    validate,
    validate_chat_model,
)

CATALOG = default_catalog()
AUDIO = {
    "kind": "audio",
    "name": "song.mp3",
    "size_bytes": 1_000_000,
    "declared_duration_s": 120.0,
    "measured_duration_s": 120.4,
}
IMAGE = {"kind": "image", "name": "cat.png", "size_bytes": 2_000_000}


def req(model="lumen-flash", prompt="a red fox in snow", params=None, references=None):
    return {"model": model, "prompt": prompt, "params": params or {}, "references": references or []}


def _revalidates(n: NormalizedRequest) -> None:
    """A normalized request, sent again as a request or as plain JSON data, normalizes to itself."""
    assert validate(CATALOG, GenerationRequest(n.model, n.prompt, dict(n.params), n.references)) == n
    data = req(n.model, n.prompt, dict(n.params), [vars(r) for r in n.references])
    assert validate(CATALOG, data) == n
    json.dumps(data, allow_nan=False)


REJECTIONS = {
    "request_malformed": [
        None,
        42,
        "lumen-flash",
        ["lumen-flash"],
        {**req(), "user": 1},
        req(params=[1, 2]),
        {**req(), "references": "cat.png"},
    ],
    "model_not_found": [req(model="ghost"), req(model=None), req(model=""), req(model=["x"]), req(model="x" * 10**5)],
    "direct_generation_disabled": [req(model="kinetica-ultra")],
    "runtime_not_async": [req(model="parley-chat"), req(model="lumen-upscale", references=[IMAGE])],
    "prompt_invalid": [req(prompt=17), req(prompt=["a"]), req(prompt="fox\x00"), req(prompt="fox \ud800")],
    "prompt_empty": [req(prompt=""), req(prompt="   \n\t"), req(prompt=None)],
    "prompt_too_long": [req(prompt="x" * 2001), req(prompt="y" * 10**6)],
    "param_unknown": [req(params={"colour": "red"}), req(params={1: 2})],
    "param_invalid": [
        req(params={"width": "wide"}),
        req(params={"width": 512.5}),
        req(params={"width": True}),
        req(params={"width": math.nan}),
        req(params={"width": "9" * 5000}),
        req(params={"style": "gothic"}),
        req(params={"style": 3}),
        req("lumen-pro", params={"safe_mode": "maybe"}),
        req("lumen-pro", params={"negative_prompt": "n" * 501}),
        req("kinetica-v2", params={"fps": 25}),
        req("lumen-edit", params={"strength": math.inf}, references=[IMAGE]),
    ],
    "param_out_of_range": [
        req(params={"width": 4096}),
        req(params={"width": "-1"}),
        req(params={"width": 10**400}),
        req("lumen-edit", params={"strength": 1.5}, references=[IMAGE]),
    ],
    "reference_invalid": [
        req("lumen-pro", references=[17]),
        req("lumen-pro", references=[{"name": "x"}]),
        req("lumen-pro", references=[{**IMAGE, "size_bytes": -1}]),
        req("lumen-pro", references=[{**IMAGE, "path": "/etc"}]),
        req("lumen-pro", references=[{**IMAGE, "name": "a\x00"}]),
        req("sonora-isolate", prompt="", references=[{**AUDIO, "measured_duration_s": -3}]),
    ],
    "reference_not_accepted": [
        req(references=[IMAGE]),
        req("lumen-pro", references=[AUDIO]),
        req("lumen-pro", references=[{**IMAGE, "kind": "text"}]),
    ],
    "too_many_references": [req("lumen-pro", references=[IMAGE] * 5), req("lumen-edit", references=[IMAGE] * 2)],
    "reference_missing": [req("lumen-edit"), req("sonora-isolate", prompt=""), req("kinetica-i2v")],
    "reference_too_large": [
        req("lumen-pro", references=[{**IMAGE, "size_bytes": 10_000_001}]),
        req("sonora-isolate", references=[{**AUDIO, "size_bytes": 10**30}]),
    ],
    "duration_unverified": [
        req("sonora-isolate", references=[{**AUDIO, "measured_duration_s": None}]),
        req("sonora-isolate", references=[{"kind": "audio", "size_bytes": 10}]),
    ],
    "duration_too_long": [
        req("sonora-isolate", references=[{**AUDIO, "declared_duration_s": 601.0}]),
        req("sonora-isolate", references=[{**AUDIO, "declared_duration_s": None, "measured_duration_s": 900.0}]),
        req("sonora-isolate", references=[{**AUDIO, "declared_duration_s": 700.0, "measured_duration_s": None}]),
    ],
    "duration_mismatch": [
        req("sonora-isolate", references=[{**AUDIO, "declared_duration_s": 30.0}]),
        req("sonora-isolate", references=[{**AUDIO, "measured_duration_s": 121.5}]),
    ],
}


def test_every_code_is_exercised():
    assert set(REJECTIONS) == set(VALIDATION_CODES) - {"runtime_not_chat", "prompt_too_short"}


@pytest.mark.parametrize(("code", "request_"), [(c, r) for c, rs in REJECTIONS.items() for r in rs])
def test_rejection_codes(code, request_):
    with pytest.raises(ValidationError) as info:
        validate(CATALOG, request_)
    err = info.value
    assert err.code == code, err.message
    assert err.message and len(err.message) < 400
    assert err.user_correctable is (code not in NOT_USER_CORRECTABLE)


def test_user_correctable_split():
    assert {"model_not_found", "direct_generation_disabled", "runtime_not_async"} <= NOT_USER_CORRECTABLE
    assert not NOT_USER_CORRECTABLE & {"prompt_empty", "param_invalid", "duration_mismatch", "reference_missing"}


def test_prompt_too_short_uses_the_model_minimum():
    # the shipped catalogue asks for at least 1 character, so build a stricter copy
    strict = Catalog((replace(CATALOG.get("lumen-flash"), prompt_min=5),))
    with pytest.raises(ValidationError) as info:
        validate(strict, req(prompt="fox"))
    assert info.value.code == "prompt_too_short"


def test_checks_follow_the_guide_order():
    # a request wrong in every way reports the earliest step first
    assert _code(req("kinetica-ultra", prompt="", params={"x": 1})) == "direct_generation_disabled"
    assert _code(req("lumen-edit", prompt="", params={"x": 1})) == "prompt_empty"
    assert _code(req("lumen-edit", params={"x": 1}, references=[AUDIO])) == "param_unknown"
    assert _code(req("lumen-edit", references=[AUDIO])) == "reference_not_accepted"
    assert _code(req("sonora-isolate", params={"target": "drums"}, references=[{"kind": "audio"}])) == "param_invalid"


def _code(request) -> str:
    with pytest.raises(ValidationError) as info:
        validate(CATALOG, request)
    return info.value.code


def test_normalization_fills_defaults_coerces_and_canonicalizes():
    n = validate(
        CATALOG,
        req(
            "kinetica-v2",
            prompt="  waves at dusk  ",
            params={"duration": "7", "resolution": "1080P", "fps": 30.0, "aspect_ratio": None},
        ),
    )
    assert isinstance(n, NormalizedRequest)
    assert n.prompt == "waves at dusk"
    assert n.params == {"duration": 7, "resolution": "1080p", "fps": 30, "aspect_ratio": "16:9"}
    assert type(n.params["duration"]) is int
    assert (n.model, n.category, n.provider, n.billing_type, n.base_credits) == (
        "kinetica-v2",
        "video",
        "kinetica",
        "per_second",
        21,
    )
    pro = validate(CATALOG, req("lumen-pro", params={"safe_mode": "false", "quality": " HD ", "aspect_ratio": "16:9"}))
    assert pro.params["safe_mode"] is False and pro.params["quality"] == "hd"
    flash = validate(CATALOG, req(params={"width": "1024", "height": 768.0, "seed": " 42 "}))
    assert flash.params == {"width": 1024, "height": 768, "style": "natural", "seed": 42}
    edit = validate(CATALOG, req("lumen-edit", params={"strength": "0.25"}, references=[IMAGE]))
    assert edit.params["strength"] == 0.25


def test_references_are_normalized():
    n = validate(
        CATALOG,
        req(
            "sonora-isolate",
            prompt="",
            references=[
                {**AUDIO, "kind": " Audio ", "name": " song.mp3 ", "size_bytes": "1000", "declared_duration_s": "120"}
            ],
        ),
    )
    assert n.references == (Reference("audio", "song.mp3", 1000, 120.0, 120.4),)
    assert n.base_credits == 3


def test_audio_isolation_accepts_a_verified_duration_within_tolerance_and_limit():
    ok = validate(
        CATALOG,
        req(
            "sonora-isolate",
            prompt="",
            references=[Reference("audio", "a.wav", 10, declared_duration_s=None, measured_duration_s=600.0)],
        ),
    )
    assert ok.references[0].measured_duration_s == 600.0


def test_generation_request_input_and_idempotence():
    n = validate(CATALOG, GenerationRequest("lumen-pro", " fox ", {"quality": "HD"}, (Reference("image", "a", 5),)))
    _revalidates(n)


def test_validate_chat_model():
    assert validate_chat_model(CATALOG, "parley-chat").runtime == "chat"
    for bad, code in (("lumen-flash", "runtime_not_chat"), ("ghost", "model_not_found"), (None, "model_not_found")):
        with pytest.raises(ValidationError) as info:
            validate_chat_model(CATALOG, bad)
        assert info.value.code == code


# --- any input whatsoever -------------------------------------------------------

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4) | st.tuples(inner, inner)
    ),
    max_leaves=12,
)


def mostly(good, bad, weight=3):
    """`good` about weight/(weight+1) of the time: junk must not drown the requests that pass."""
    return st.integers(0, weight).flatmap(lambda i: bad if i == weight else good)


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")), max_size=40)


def _number_near(lo, hi):
    lo = -1000 if lo is None else lo
    hi = 1000 if hi is None else hi
    return st.one_of(
        st.sampled_from([lo, hi, lo - 1, hi + 1]),
        st.integers(int(lo) - 2, int(hi) + 2),
        st.floats(lo - 1, hi + 1, allow_nan=False),
    )


def _value_for(p):
    good = [st.just(p.default), st.just(str(p.default))]
    if p.choices:
        good.append(st.sampled_from(p.choices).map(lambda c: f" {c.upper()} " if isinstance(c, str) else c))
    if p.type in ("int", "float"):
        near = _number_near(p.min, p.max)
        good += [near, near.map(str)]
    if p.type == "bool":
        good.append(st.sampled_from(["true", "False", " yes ", "off", 0, 1, 2]))
    if p.type == "str" and not p.choices:
        good.append(TEXT)
    return mostly(st.one_of(good), st.none() | JUNK)


def _params_for(spec):
    fixed = {p.name: _value_for(p) for p in spec.params}
    return mostly(st.fixed_dictionaries({}, optional=fixed), st.dictionaries(st.text(max_size=8), JUNK, max_size=2))


def _good_reference(spec):
    limit = spec.rules.max_duration_s or 60.0
    return st.builds(
        lambda kind, name, size, measured, drift, declare: Reference(
            kind, name, size, min(measured + drift, limit) if declare else None, measured
        ),
        st.sampled_from([r.kind for r in spec.references] or ["image"]),
        TEXT,
        st.integers(0, 5_000_000),
        st.floats(0, limit, allow_nan=False),
        st.floats(-1.5, 1.5),
        st.booleans(),
    )


def _references_for(spec):
    limit = spec.rules.max_duration_s or 60.0
    duration = st.one_of(st.none(), st.floats(0, limit * 1.2, allow_nan=False), st.just(limit), JUNK)
    junk_ref = st.fixed_dictionaries(
        {"kind": st.sampled_from(["image", "audio", "video", " IMAGE ", "text"]) | JUNK},
        optional={
            "name": st.text(max_size=20) | JUNK,
            "size_bytes": st.integers(-1, 60_000_000) | JUNK,
            "declared_duration_s": duration,
            "measured_duration_s": duration,
        },
    )
    good = _good_reference(spec)
    as_dict = good.map(
        lambda r: {
            "kind": r.kind.upper(),
            "name": f" {r.name}",
            "size_bytes": str(r.size_bytes),
            "declared_duration_s": r.declared_duration_s,
            "measured_duration_s": r.measured_duration_s,
        }
    )
    return mostly(st.lists(mostly(good | as_dict, junk_ref), max_size=2), JUNK)


def _near_valid(spec):
    prompt = mostly(
        TEXT.map(lambda t: f"  a quiet harbour {t}  "),
        st.one_of(st.text(max_size=60), st.just("x" * (spec.prompt_max + 1)), JUNK),
    )
    model = mostly(st.just(spec.id), st.sampled_from([spec.id.upper(), f" {spec.id}", "ghost"]) | JUNK)
    shape = st.fixed_dictionaries(
        {"model": model, "prompt": prompt}, optional={"params": _params_for(spec), "references": _references_for(spec)}
    )
    return shape | shape.map(
        lambda d: GenerationRequest(d["model"], d["prompt"], d.get("params", {}), d.get("references", ()))
    )


REQUESTS = mostly(st.sampled_from(CATALOG.models).flatmap(_near_valid), JUNK)


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(REQUESTS)
def test_any_input_gives_a_normalized_request_or_a_typed_error(request_):
    try:
        n = validate(CATALOG, request_)
    except ValidationError as err:
        assert err.code in VALIDATION_CODES
        assert isinstance(err.message, str) and err.message
        return
    assert isinstance(n, NormalizedRequest)
    _revalidates(n)
    assert isinstance(n.base_credits, int) and n.base_credits >= 0
