"""Scenario files: data/scenarios/*.toml parsed into frozen dataclasses.

A scenario names its seed, its size (a horizon in simulated seconds and/or a
number of tasks), the user population, the provider farm with its fault rates
(defaults in `[farm]`, per-provider overrides in `[farm.providers.NAME]`),
outage windows, the billing policy (`[policy]`, as BillingPolicy reads it) and,
for QA stories, a `[[script]]` of exact events at exact times.

Unknown keys and bad values are refused with ScenarioError naming the file, the
key and the reason.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from rivya_core import tomlfile
from rivya_core.domain import ValidationError
from rivya_core.policy import BillingPolicy, PolicyError

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "data" / "scenarios"
POLICY_DIR = SCENARIO_DIR.parent / "policies"


class ScenarioError(ValidationError):
    code = "scenario_invalid"
    user_correctable = True


def prob(default: float = 0.0) -> Any:
    return field(default=default, metadata={"min": 0.0, "max": 1.0})


def pos(default: float, **meta: Any) -> Any:
    return field(default=default, metadata={"min": 0.0, **meta})


@dataclass(frozen=True)
class Range:
    """Uniform draw between low and high; or, with `points` (empirical quantiles at evenly
    spaced probabilities, written `{quantiles = [q0, ..., q100]}`), the inverse of their
    piecewise-linear distribution."""

    low: float
    high: float
    points: tuple[float, ...] = ()

    def draw(self, u: float) -> float:
        pts = self.points
        if not pts:
            return self.low + (self.high - self.low) * u
        x = u * (len(pts) - 1)
        i = min(int(x), len(pts) - 2)
        return pts[i] + (pts[i + 1] - pts[i]) * (x - i)


@dataclass(frozen=True)
class ProviderConfig:
    capacity: int = pos(8, min=1)
    image_s: Range = Range(4.0, 20.0)
    video_s: Range = Range(60.0, 600.0)
    audio_s: Range = Range(10.0, 90.0)
    submit_refused: float = prob()
    submit_error: float = prob()
    submit_timeout: float = prob()
    content_policy: float = prob()   # failure, class user
    model_error: float = prob()      # failure, class provider
    upstream_timeout: float = prob()  # failure reported, class infrastructure
    lost_job: float = prob()         # the provider silently loses the job
    no_urls: float = prob()          # success without result URLs
    callback_delay_s: Range = Range(0.2, 3.0)
    early: float = prob()
    lost: float = prob()
    duplicate: float = prob()
    reorder: float = prob()
    forged: float = prob()
    stale: float = prob()
    malformed: float = prob()

    def gen_range(self, category: str) -> Range:
        return {"image": self.image_s, "video": self.video_s, "audio": self.audio_s}.get(category, self.image_s)


@dataclass(frozen=True)
class Outage:
    provider: str
    start_s: float = pos(0.0)
    end_s: float = pos(0.0)
    mode: str = field(default="submit_error", metadata={"choices": ("submit_error", "submit_refused", "fail")})


@dataclass(frozen=True)
class Population:
    users: int = pos(50, min=1)
    balance: Range = Range(200.0, 2000.0)
    broke_fraction: float = prob(0.0)      # users who start near zero
    broke_balance: Range = Range(0.0, 20.0)
    topup_probability: float = prob(0.3)    # after an insufficient-credit refusal
    topup_amount: int = pos(500, min=1)


@dataclass(frozen=True)
class Arrivals:
    rate_per_hour: float = pos(600.0)
    pattern: str = field(default="flat", metadata={"choices": ("flat", "daily", "bursts")})
    daily_amplitude: float = prob(0.6)      # daily: rate * (1 + a*sin)
    burst_every_s: float = pos(600.0, min=1.0)
    burst_size: int = pos(20, min=1)


@dataclass(frozen=True)
class Mix:
    image: float = pos(0.6)
    video: float = pos(0.2)
    audio: float = pos(0.05)
    chat: float = pos(0.1)
    tool_chat: float = pos(0.05)
    chat_prompt_tokens: Range = Range(50.0, 1500.0)
    chat_max_output_tokens: int = pos(800, min=1)
    chat_failure: float = prob(0.02)
    chat_overrun: float = prob(0.0)         # completion beyond the max asked
    models: dict[str, float] = field(default_factory=dict)  # weight of each model in its category (default: even)


@dataclass(frozen=True)
class Behaviour:
    retry_failed: float = prob(0.3)
    resubmit_running: float = prob(0.05)
    duplicate_heavy: float = prob(0.02)
    heed_recheck: float = prob(0.5)
    max_retries: int = pos(2)
    patience_s: float = pos(300.0, min=1.0)  # how long a user waits before acting on a running task


@dataclass(frozen=True)
class ScriptEvent:
    """One scripted step. actions: submit, callback, callback_early, callback_progress,
    callback_repeat, lose_next_callback, poll, recheck, grant, chat."""

    at: float = pos(0.0)
    action: str = field(default="poll", metadata={"choices": (
        "submit", "callback", "callback_early", "callback_progress", "callback_repeat", "lose_next_callback",
        "poll", "recheck", "grant", "chat")})
    user: int = pos(0)
    model: str = ""
    prompt: str = "a scripted prompt"
    task: int = pos(0)        # 1-based index of the scripted submit it refers to
    amount: int = pos(0)
    outcome: str = field(default="succeeded", metadata={"choices": ("succeeded", "failed", "lost", "no_urls")})
    gen_s: float = pos(0.0)   # scripted generation time (0: drawn); chat: seconds until the turn settles
    # submit: what the provider does, as recorded
    params: dict[str, Any] = field(default_factory=dict)
    error_code: str = ""      # outcome "failed": the provider's error (default: a model error)
    error_message: str = ""
    failure_class: str = field(default="", metadata={"choices": ("", "user", "provider", "infrastructure")})
    submit_fault: str = field(default="", metadata={"choices": ("", "refused", "error", "timeout")})
    auto_callbacks: bool = True  # false: the provider sends only the callbacks the script lists
    chat: int = pos(0)        # submit: 1-based index of the scripted chat turn whose tool call it is
    # chat: one turn (reserve now, settle or fail after gen_s)
    prompt_tokens: int = pos(0)
    max_output_tokens: int = pos(0)
    completion_tokens: int = pos(0)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = pos(1)
    horizon_s: float = pos(3600.0)
    tasks: int = pos(0)                     # 0: no cap, the horizon decides
    drain_s: float = pos(0.0)               # 0: the policy's longest timeout plus margin
    callbacks: bool = True
    poll_tick_s: float = pos(10.0, min=0.1)
    population: Population = Population()
    arrivals: Arrivals = Arrivals()
    mix: Mix = Mix()
    behaviour: Behaviour = Behaviour()
    farm: ProviderConfig = ProviderConfig()
    providers: dict[str, ProviderConfig] = field(default_factory=dict)
    outages: tuple[Outage, ...] = ()
    policy: BillingPolicy = BillingPolicy()
    script: tuple[ScriptEvent, ...] = ()
    source: str = field(default="", compare=False)  # the TOML text it was read from
    path: str = field(default="", compare=False)

    def provider_config(self, name: str) -> ProviderConfig:
        return self.providers.get(name, self.farm)

    def with_policy(self, policy: BillingPolicy) -> Scenario:
        from dataclasses import replace

        return replace(self, policy=policy)

    @property
    def scripted(self) -> bool:
        return bool(self.script)

    def to_toml(self) -> str:
        """This scenario as scenario TOML: `parse_scenario(s.to_toml()) == s`. What a run
        stores, so a scenario edited in memory (the Simulation lab's knobs) replays as run."""
        return _dump(self)


# --- writing ------------------------------------------------------------------------

_SECTIONS = ("population", "arrivals", "mix", "behaviour", "farm")
_TOP = ("name", "description", "seed", "horizon_s", "tasks", "drain_s", "callbacks", "poll_tick_s")


def _dump(sc: Scenario) -> str:
    """Scenario TOML for sc: values that differ from the defaults (name always), so
    it reads like a hand-written file. No TOML writer ships with Python; this one
    covers what a scenario holds: numbers, booleans, strings, lists, tables."""
    lines = ["[scenario]"]
    defaults = {"description": "", "seed": 1, "horizon_s": 3600.0, "tasks": 0, "drain_s": 0.0,
                "callbacks": True, "poll_tick_s": 10.0}
    lines += [f"{k} = {_value(getattr(sc, k))}" for k in _TOP
              if k == "name" or getattr(sc, k) != defaults[k]]
    for name in _SECTIONS:
        lines += _table(name, _changed(getattr(sc, name), type(getattr(sc, name))()))
    for pname, cfg in sorted(sc.providers.items()):
        lines += _table(f"farm.providers.{_key(pname)}", _changed(cfg, sc.farm), always=True)
    for out in sc.outages:
        lines += ["", "[[outages]]", *(f"{k} = {_value(v)}" for k, v in _as_dict(out).items())]
    default_policy = BillingPolicy().to_dict()
    policy = {k: v for k, v in sc.policy.to_dict().items() if v != default_policy[k] or k == "name"}
    if policy != {"name": "default"}:
        lines += _table("policy", policy)
    for ev in sc.script:
        lines += ["", "[[script]]", *(f"{k} = {_value(v)}" for k, v in _as_dict(ev).items()
                                      if k in ("at", "action") or v != getattr(_NO_EVENT, k))]
    return "\n".join(lines) + "\n"


_NO_EVENT = ScriptEvent()


def _changed(obj: Any, base: Any) -> dict[str, Any]:
    return {k: v for k, v in _as_dict(obj).items() if v != getattr(base, k)}


def _table(header: str, values: dict[str, Any], always: bool = False) -> list[str]:
    if not values and not always:
        return []
    return ["", f"[{header}]", *(f"{_key(k)} = {_value(v)}" for k, v in values.items())]


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() and k.isascii() else _value(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):  # a JSON string is a TOML basic string, once DEL is escaped too
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(v, Range):
        if v.points:
            return "{quantiles = " + _value(list(v.points)) + "}"
        return f"[{v.low!r}, {v.high!r}]"
    if isinstance(v, list | tuple | frozenset | set):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


# --- loading ------------------------------------------------------------------------


def list_scenarios(directory: Path | None = None) -> list[Path]:
    return sorted((directory or SCENARIO_DIR).glob("*.toml"))


def resolve(name_or_path: str | Path) -> Path:
    """A path as given, or a bare name looked up in data/scenarios."""
    p = Path(name_or_path)
    if p.exists() or p.suffix == ".toml" or "/" in str(name_or_path):
        return p
    return SCENARIO_DIR / f"{p.name}.toml"


def load_scenario(name_or_path: str | Path) -> Scenario:
    path = resolve(name_or_path)
    text = tomlfile.read_text(path, ScenarioError, "scenario")
    return parse_scenario(text, str(path), default_name=path.stem)


def parse_scenario(text: str, source: str = "<scenario>", default_name: str = "scenario") -> Scenario:
    raw = dict(tomlfile.parse(text, source, ScenarioError))
    top = dict(raw.pop("scenario", {}))
    if not isinstance(top, dict):
        raise ScenarioError(f"{source}: [scenario] must be a table")
    for key in ("population", "arrivals", "mix", "behaviour", "farm", "outages", "policy", "script"):
        if key in raw:
            top[key] = raw.pop(key)
    if raw:
        raise ScenarioError(f"{source}: unknown key {sorted(raw)[0]!r}")
    top.setdefault("name", default_name)
    farm = top.get("farm", {})
    if isinstance(farm, dict) and "providers" in farm:
        farm = dict(farm)
        provs = farm.pop("providers")
        if not isinstance(provs, dict):
            raise ScenarioError(f"{source}: key 'farm.providers': must be a table of provider tables")
        top["farm"] = farm
        top["providers"] = provs
    policy = top.pop("policy", None)
    scen = _build(Scenario, top, source, "")
    updates: dict[str, Any] = {"source": text, "path": source}
    if policy is not None:
        if not isinstance(policy, dict):
            raise ScenarioError(f"{source}: key 'policy': must be a table")
        try:
            updates["policy"] = BillingPolicy.from_dict({"name": "default", **policy}, source)
        except PolicyError as exc:
            raise ScenarioError(exc.message) from None
    # per-provider overrides start from the [farm] defaults
    provs = {}
    for pname, table in top.get("providers", {}).items():
        if not isinstance(table, dict):
            raise ScenarioError(f"{source}: key 'farm.providers.{pname}': must be a table")
        provs[pname] = _build(ProviderConfig, {**_as_dict(scen.farm), **table}, source, f"farm.providers.{pname}.",
                              known=_fields(ProviderConfig))
    updates["providers"] = provs
    from dataclasses import replace

    scen = replace(scen, **updates)
    for i, out in enumerate(scen.outages):
        if out.end_s <= out.start_s:
            raise ScenarioError(f"{source}: key 'outages[{i}].end_s': must be after start_s")
    if scen.tasks == 0 and scen.horizon_s <= 0 and not scen.script:
        raise ScenarioError(f"{source}: key 'horizon_s': a run needs a horizon, a task count or a script")
    return scen


def _fields(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _build(cls: type, table: Any, source: str, prefix: str, known: set[str] | None = None) -> Any:
    if not isinstance(table, dict):
        raise ScenarioError(f"{source}: key '{prefix.rstrip('.') or cls.__name__}': must be a table")
    hints = typing.get_type_hints(cls)
    names = known or _fields(cls)
    skip = {"source", "path", "policy"}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names or key in skip:
            raise ScenarioError(f"{source}: unknown key '{prefix}{key}'")
        f = next(f for f in fields(cls) if f.name == key)
        kwargs[key] = _coerce(hints[key], value, f.metadata, source, prefix + key)
    missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
               and f.name not in kwargs]
    if missing:
        raise ScenarioError(f"{source}: key '{prefix}{missing[0]}': required")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, meta: Any, source: str, key: str) -> Any:
    def bad(reason: str) -> ScenarioError:
        return ScenarioError(f"{source}: key '{key}': {reason}")

    if isinstance(value, ProviderConfig | Range | Population):  # already built (provider defaults)
        return value
    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("must be true or false")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise bad("must be a number")
        if tp is int and value != int(value):
            raise bad("must be a whole number")
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and value < lo:
            raise bad(f"must be at least {lo}")
        if hi is not None and value > hi:
            raise bad(f"must be at most {hi}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("must be a string")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise bad(f"must be one of {', '.join(choices)}")
        return value
    if tp is Range:
        if isinstance(value, dict):
            q = value.get("quantiles")
            if set(value) != {"quantiles"} or not isinstance(q, list) or len(q) < 2 or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in q) \
                    or any(b < a for a, b in zip(q, q[1:], strict=False)):
                raise bad("must be {quantiles = [q0, ..., q100]}: at least two non-negative, non-decreasing numbers")
            return Range(float(q[0]), float(q[-1]), tuple(float(v) for v in q))
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value, value]
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            raise bad("must be [low, high]")
        if value[0] < 0 or value[1] < value[0]:
            raise bad("must be [low, high] with 0 <= low <= high")
        return Range(float(value[0]), float(value[1]))
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise bad("must be a list of tables")
        return tuple(_build(inner, v, source, f"{key}[{i}].") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("must be a table")
        if key.endswith("models") and not all(isinstance(v, int | float) and not isinstance(v, bool)
                                              and math.isfinite(v) and v >= 0 for v in value.values()):
            raise bad("must map model ids to non-negative weights")
        return value  # provider overrides: built after the [farm] defaults
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return _build(tp, value, source, key + ".")
    if isinstance(tp, types.UnionType):
        raise bad("unsupported type")
    raise bad(f"unsupported type {tp}")
