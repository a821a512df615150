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
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rivya_core import limits, tomlfile
from rivya_core.domain import ValidationError
from rivya_core.policy import BillingPolicy, PolicyError

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "data" / "scenarios"
POLICY_DIR = SCENARIO_DIR.parent / "policies"


class ScenarioError(ValidationError):
    code = "scenario_invalid"
    user_correctable = True


def prob(default: float = 0.0) -> Any:
    return field(default=default, metadata={"kind": "probability"})


def pos(default: float, kind: str, **meta: Any) -> Any:
    """A number field: its range is rivya_core.limits' `kind`, narrowed by meta min."""
    return field(default=default, metadata={"kind": kind, **meta})


def ranged(default: Range, kind: str) -> Any:
    """A Range field whose ends are numbers of rivya_core.limits' `kind`."""
    return field(default=default, metadata={"kind": kind})


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
    capacity: int = pos(8, "count")
    image_s: Range = ranged(Range(4.0, 20.0), "seconds")
    video_s: Range = ranged(Range(60.0, 600.0), "seconds")
    audio_s: Range = ranged(Range(10.0, 90.0), "seconds")
    submit_refused: float = prob()
    submit_error: float = prob()
    submit_timeout: float = prob()
    content_policy: float = prob()  # failure, class user
    model_error: float = prob()  # failure, class provider
    upstream_timeout: float = prob()  # failure reported, class infrastructure
    lost_job: float = prob()  # the provider silently loses the job
    no_urls: float = prob()  # success without result URLs
    callback_delay_s: Range = ranged(Range(0.2, 3.0), "seconds")
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
    start_s: float = pos(0.0, "seconds")
    end_s: float = pos(0.0, "seconds")
    # submit_*: submissions refused; fail: jobs fail; hang: jobs are accepted and never finish (lost upstream)
    mode: str = field(default="submit_error", metadata={"choices": ("submit_error", "submit_refused", "fail", "hang")})


@dataclass(frozen=True)
class Population:
    users: int = pos(50, "users")
    balance: Range = ranged(Range(200.0, 2000.0), "credits")
    broke_fraction: float = prob(0.0)  # users who start near zero
    broke_balance: Range = ranged(Range(0.0, 20.0), "credits")
    topup_probability: float = prob(0.3)  # after an insufficient-credit refusal
    topup_amount: int = pos(500, "whole_credits", min=1)


@dataclass(frozen=True)
class Grants:
    """Grants that expire, as the ShipAny template keeps them (`run --shape shipany`): every user's
    starting balance and top-ups are paid packs (never expiring); `signup_gift` credits are given at
    sign-up and expire after the policy's `credit_expiry_days` (never, when it is unset). The
    provider reports `canceled_fraction` of the failed generations as canceled (never refunded by
    the template). The default shape ignores this table."""

    signup_gift: int = pos(0, "whole_credits")
    canceled_fraction: float = prob(0.0)


@dataclass(frozen=True)
class Arrivals:
    rate_per_hour: float = pos(600.0, "rate_per_hour")
    pattern: str = field(default="flat", metadata={"choices": ("flat", "daily", "bursts")})
    daily_amplitude: float = prob(0.6)  # daily: rate * (1 + a*sin)
    burst_every_s: float = pos(600.0, "seconds", min=1.0)
    burst_size: int = pos(20, "count")


@dataclass(frozen=True)
class Mix:
    image: float = pos(0.6, "weight")
    video: float = pos(0.2, "weight")
    audio: float = pos(0.05, "weight")
    chat: float = pos(0.1, "weight")
    tool_chat: float = pos(0.05, "weight")
    chat_prompt_tokens: Range = ranged(Range(50.0, 1500.0), "tokens")
    chat_max_output_tokens: int = pos(800, "tokens", min=1)
    chat_failure: float = prob(0.02)
    chat_overrun: float = prob(0.0)  # completion beyond the max asked
    models: dict[str, float] = field(default_factory=dict)  # weight of each model in its category (default: even)


@dataclass(frozen=True)
class Behaviour:
    retry_failed: float = prob(0.3)
    resubmit_running: float = prob(0.05)
    duplicate_heavy: float = prob(0.02)
    heed_recheck: float = prob(0.5)
    max_retries: int = pos(2, "retries")
    patience_s: float = pos(300.0, "seconds", min=1.0)  # how long a user waits before acting on a running task
    read_never: float = prob(0.2)  # share of notifications their user never opens
    read_median_s: float = pos(
        900.0, "seconds", min=1.0, max=30 * 86400.0
    )  # median delay before a notification is read
    read_spread: float = pos(1.2, "weight", max=5.0)  # log-normal sigma of that delay


@dataclass(frozen=True)
class ScriptEvent:
    """One scripted step. actions: submit, callback, callback_early, callback_progress,
    callback_repeat, lose_next_callback, poll, recheck, grant, chat."""

    at: float = pos(0.0, "seconds")
    action: str = field(
        default="poll",
        metadata={
            "choices": (
                "submit",
                "callback",
                "callback_early",
                "callback_progress",
                "callback_repeat",
                "lose_next_callback",
                "poll",
                "recheck",
                "grant",
                "chat",
            )
        },
    )
    user: int = pos(0, "index")
    model: str = ""
    prompt: str = "a scripted prompt"
    task: int = pos(0, "index")  # 1-based index of the scripted submit it refers to
    amount: int = pos(0, "whole_credits")
    outcome: str = field(default="succeeded", metadata={"choices": ("succeeded", "failed", "lost", "no_urls")})
    gen_s: float = pos(0.0, "seconds")  # scripted generation time (0: drawn); chat: seconds until the turn settles
    # submit: what the provider does, as recorded
    params: dict[str, Any] = field(default_factory=dict)
    error_code: str = ""  # outcome "failed": the provider's error (default: a model error)
    error_message: str = ""
    failure_class: str = field(default="", metadata={"choices": ("", "user", "provider", "infrastructure")})
    submit_fault: str = field(default="", metadata={"choices": ("", "refused", "error", "timeout")})
    auto_callbacks: bool = True  # false: the provider sends only the callbacks the script lists
    queue_s: float = pos(0.0, "seconds")  # seconds the job waits in the provider's queue before it runs
    chat: int = pos(0, "index")  # submit: 1-based index of the scripted chat turn whose tool call it is
    # chat: one turn (reserve now, settle or fail after gen_s)
    prompt_tokens: int = pos(0, "tokens")
    max_output_tokens: int = pos(0, "tokens")
    completion_tokens: int = pos(0, "tokens")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str = ""
    seed: int = pos(1, "seed")
    horizon_s: float = pos(3600.0, "seconds")
    tasks: int = pos(0, "scenario_tasks")  # 0: no cap, the horizon decides
    drain_s: float = pos(0.0, "seconds")  # 0: the policy's longest timeout plus margin
    callbacks: bool = True
    poll_tick_s: float = pos(10.0, "poll_tick_s")
    population: Population = Population()
    grants: Grants = Grants()
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

    def to_toml(self) -> str:
        """This scenario as scenario TOML: `parse_scenario(s.to_toml()) == s`. What a run
        stores, so a scenario edited in memory (the Simulation lab's knobs) replays as run."""
        return _dump(self)


# --- writing ------------------------------------------------------------------------

_SECTIONS = ("population", "grants", "arrivals", "mix", "behaviour", "farm")
_TOP = ("name", "description", "seed", "horizon_s", "tasks", "drain_s", "callbacks", "poll_tick_s")


def _dump(sc: Scenario) -> str:
    """Scenario TOML for sc: values that differ from the defaults (name always), so
    it reads like a hand-written file. No TOML writer ships with Python; this one
    covers what a scenario holds: numbers, booleans, strings, lists, tables."""
    lines = ["[scenario]"]
    defaults = {
        "description": "",
        "seed": 1,
        "horizon_s": 3600.0,
        "tasks": 0,
        "drain_s": 0.0,
        "callbacks": True,
        "poll_tick_s": 10.0,
    }
    lines += [f"{k} = {_value(getattr(sc, k))}" for k in _TOP if k == "name" or getattr(sc, k) != defaults[k]]
    for name in _SECTIONS:
        lines += _table(name, _changed(getattr(sc, name), type(getattr(sc, name))()))
    for pname, cfg in sorted(sc.providers.items()):
        lines += _table(f"farm.providers.{_key(pname)}", _changed(cfg, sc.farm), always=True)
    for out in sc.outages:
        lines += ["", "[[outages]]", *(f"{k} = {_value(v)}" for k, v in _as_dict(out).items())]
    default_policy = BillingPolicy().to_dict()
    policy = {k: v for k, v in sc.policy.to_dict().items() if v != default_policy.get(k) or k == "name"}
    if policy != {"name": "default"}:
        lines += _table("policy", policy)
    for ev in sc.script:
        lines += [
            "",
            "[[script]]",
            *(
                f"{k} = {_value(v)}"
                for k, v in _as_dict(ev).items()
                if k in ("at", "action") or v != getattr(_NO_EVENT, k)
            ),
        ]
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


def describe_own_policy(sc: Scenario, directory: Path | None = None) -> str:
    """What a scenario's own policy is, in one line. It is built from the scenario's [policy]
    table over the defaults, not read from a policy file, so it has no `description` of its own:
    it is described by the shipped policy file it equals, or as the default file's policy with
    the settings its [policy] table changes."""
    files = sorted((directory or POLICY_DIR).glob("*.toml"))
    loaded = []
    for path in files:
        try:
            loaded.append((path, BillingPolicy.load(path)))
        except PolicyError:  # a broken file describes nothing
            continue
    same = next(((path, p) for path, p in loaded if replace(p, name="") == replace(sc.policy, name="")), None)
    if same is not None:
        path, p = same
        return (
            f"{sc.policy.name}: {p.description or 'no description in ' + path.name} (the scenario's own "
            f"policy is the same as data/policies/{path.name})"
        )
    base = BillingPolicy().to_dict()
    changed = {k: v for k, v in sc.policy.to_dict().items() if k not in ("name", "description") and v != base.get(k)}
    default = next((p for path, p in loaded if path.stem == "default"), None)
    rest = f"; the rest as data/policies/default.toml: {default.description}" if default and default.description else ""
    return (
        f"{sc.policy.name} with "
        + ", ".join(f"{k} = {_value(v)}" for k, v in changed.items())
        + f" (set in the scenario's [policy] table){rest}"
    )


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
    return _from_tables(dict(tomlfile.parse(text, source, ScenarioError)), text, source, default_name)


def with_overrides(sc: Scenario, overrides: dict[str, Any], source: str = "<overrides>") -> Scenario:
    """sc with dotted keys set, checked exactly as a scenario file's: `farm.capacity`,
    `farm.providers.NAME.early`, `arrivals.rate_per_hour`, `policy.poll_interval_s`,
    `tasks` or `scenario.tasks` for the [scenario] table. Its source is its own TOML."""
    import tomllib

    raw = tomllib.loads(sc.to_toml())
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if parts[0] in _TOP:
            parts = ["scenario", *parts]
        table = raw
        for part in parts[:-1]:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ScenarioError(f"{source}: key {dotted!r}: {part!r} is not a table")
        table[parts[-1]] = value
    out = _from_tables(raw, "", source, sc.name)
    from dataclasses import replace

    return replace(out, source=out.to_toml(), path=sc.path)


def _from_tables(raw: dict[str, Any], text: str, source: str, default_name: str) -> Scenario:
    top = dict(raw.pop("scenario", {}))
    if not isinstance(top, dict):
        raise ScenarioError(f"{source}: [scenario] must be a table")
    for key in ("population", "grants", "arrivals", "mix", "behaviour", "farm", "outages", "policy", "script"):
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
        provs[pname] = _build(
            ProviderConfig,
            {**_as_dict(scen.farm), **table},
            source,
            f"farm.providers.{pname}.",
            known=_fields(ProviderConfig),
        )
    updates["providers"] = provs
    from dataclasses import replace

    scen = replace(scen, **updates)
    for i, out in enumerate(scen.outages):
        if out.end_s <= out.start_s:
            raise ScenarioError(f"{source}: key 'outages[{i}].end_s': must be after start_s")
    if scen.tasks == 0 and scen.horizon_s <= 0 and not scen.script:
        raise ScenarioError(f"{source}: key 'horizon_s': a run needs a horizon, a task count or a script")
    check_run_bounds(scen)
    return scen


def drain_seconds(sc: Scenario) -> float:
    """How long a run goes on after its last arrival: the scenario's drain_s, else the longest
    timeout, two polling intervals and a user's patience through every retry, plus 15 minutes."""
    if sc.drain_s:
        return sc.drain_s
    p = sc.policy
    longest = max([*p.timeout_s.values(), 0.0])
    patience = sc.behaviour.patience_s * (sc.behaviour.max_retries + 2)
    return longest + 2 * p.poll_interval_s + patience + 900.0


def check_run_bounds(sc: Scenario, tasks: int | None = None) -> None:
    """Refuse a scenario no run could finish: arrivals that never come or draw from an
    all-zero mix, script steps naming users that do not exist, or more polling ticks
    than limits.MAX_RUN_TICKS over the run's span (its arrivals or script, plus the
    drain), so no run can tick for ever. `tasks`: a --tasks override of the cap."""
    where = sc.path or "<scenario>"
    cap = sc.tasks if tasks is None else tasks
    if sc.script:
        for i, ev in enumerate(sc.script):
            if ev.action in ("submit", "chat", "grant") and ev.user >= sc.population.users:
                raise ScenarioError(
                    f"{where}: key 'script[{i}].user': user {ev.user} does not exist "
                    f"(users are numbered 0 to {sc.population.users - 1})"
                )
            if ev.action == "grant" and ev.amount < 1:
                raise ScenarioError(f"{where}: key 'script[{i}].amount': a grant must be at least 1 credit")
        arrivals_s = max(ev.at for ev in sc.script)
    else:
        m, rate = sc.mix, sc.arrivals.rate_per_hour
        if not m.image + m.video + m.audio + m.chat + m.tool_chat > 0:
            raise ScenarioError(
                f"{where}: key 'mix': the weights of image, video, audio, chat and tool_chat "
                "are all 0; at least one must be above 0"
            )
        if rate <= 0:
            raise ScenarioError(f"{where}: key 'arrivals.rate_per_hour': must be above 0 for a run with arrivals")
        if cap == 0 and rate * sc.horizon_s / 3600 > limits.LIMITS["scenario_tasks"].high:
            raise ScenarioError(
                f"{where}: key 'arrivals.rate_per_hour': {rate:g} an hour over {sc.horizon_s:g} s "
                f"makes more than {limits.LIMITS['scenario_tasks'].high:,.0f} tasks; set `tasks`"
            )
        arrivals_s = sc.horizon_s if sc.horizon_s > 0 else cap * 3600 / rate
    span = arrivals_s + drain_seconds(sc)
    ticks = span / sc.poll_tick_s
    if ticks > limits.MAX_RUN_TICKS:
        raise ScenarioError(
            f"{where}: key 'poll_tick_s': a tick of {sc.poll_tick_s:g} s over this run's "
            f"{span:,.0f} simulated s is {ticks:,.0f} ticks (at most {limits.MAX_RUN_TICKS:,}); "
            "raise poll_tick_s or shorten the horizon, the task count, the script or the timeouts"
        )


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
    missing = [
        f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in kwargs
    ]
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
        limit = limits.LIMITS[meta["kind"]]
        if tp is int and limit.whole is False:
            limit = replace(limit, whole=True)
        if "min" in meta:
            limit = replace(limit, low=max(limit.low, meta["min"]))
        if "max" in meta:
            limit = replace(limit, high=min(limit.high, meta["max"]))
        try:
            return tp(limit.check(value, f"{source}: key '{key}'"))
        except limits.LimitError as exc:
            raise ScenarioError(exc.message) from None
    if tp is str:
        if not isinstance(value, str):
            raise bad("must be a string")
        choices = meta.get("choices")
        if choices and value not in choices:
            raise bad(f"must be one of {', '.join(choices)}")
        return value
    if tp is Range:
        limit = replace(limits.LIMITS[meta["kind"]], whole=False)
        if isinstance(value, dict):
            q = value.get("quantiles")
            if (
                set(value) != {"quantiles"}
                or not isinstance(q, list)
                or not 2 <= len(q) <= 1001
                or not all(limit.ok(v) for v in q)
                or any(b < a for a, b in zip(q, q[1:], strict=False))
            ):
                raise bad(
                    "must be {quantiles = [q0, ..., q100]}: at least two non-decreasing numbers, each "
                    + limit.describe()
                )
            return Range(float(q[0]), float(q[-1]), tuple(float(v) for v in q))
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value, value]
        if not isinstance(value, list) or len(value) != 2 or not all(limit.ok(v) for v in value) or value[1] < value[0]:
            raise bad(f"must be [low, high] with low <= high, each {limit.describe()}")
        return Range(float(value[0]), float(value[1]))
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if not isinstance(value, list):
            raise bad("must be a list of tables")
        return tuple(_build(inner, v, source, f"{key}[{i}].") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("must be a table")
        if key.endswith("models") and not all(limits.LIMITS["weight"].ok(v) for v in value.values()):
            raise bad(f"must map model ids to weights, each {limits.describe('weight')}")
        return value  # provider overrides: built after the [farm] defaults
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return _build(tp, value, source, key + ".")
    if isinstance(tp, types.UnionType):
        raise bad("unsupported type")
    raise bad(f"unsupported type {tp}")
