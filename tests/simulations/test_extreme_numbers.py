"""Scenario and policy files with extreme values in any key: each is either
refused with one line naming the file, or runs to its end within a bounded
number of simulation steps (no run ticks for ever)."""

from __future__ import annotations

import pytest

from rivya_core.domain import RivyaError
from rivya_core.limits import MAX_RUN_TICKS
from rivya_core.policy import BillingPolicy, PolicyError
from simulations.runner import Run, drain_seconds
from simulations.scenarios import ScenarioError, parse_scenario

EXTREMES = [
    "0",
    "-1",
    "1e-300",
    "0.1",
    "1.5",
    "7",
    "1e300",
    "1e308",
    "inf",
    "-inf",
    "nan",
    "99999999999999999999999",
    "9223372036854775808",
    "[1, 2]",
    "[[1]]",
    "[]",
    "{a = 1}",
    "[{a = 1}]",
    '"x"',
    "true",
    "[0, 1e300]",
    "{quantiles = [0, inf]}",
]
ARRIVALS = """[scenario]
name = "extreme"
horizon_s = 0
tasks = 3
poll_tick_s = 10
[population]
users = 2
"""
SCRIPTED = """[scenario]
name = "extreme"
horizon_s = 0
poll_tick_s = 5
[population]
users = 2
"""
STEPS = [  # a submit, a chat turn and a grant; the extreme value goes into the step that uses the key
    {"at": "1", "action": '"submit"', "user": "0", "model": '"lumen-flash"'},
    {
        "at": "2",
        "action": '"chat"',
        "user": "1",
        "model": '"parley-chat"',
        "prompt_tokens": "10",
        "max_output_tokens": "20",
        "completion_tokens": "5",
        "gen_s": "3",
    },
    {"at": "3", "action": '"grant"', "user": "0", "amount": "5"},
]
STEP_OF = {"amount": 2, "prompt_tokens": 1, "max_output_tokens": 1, "completion_tokens": 1}
SCENARIO_KEYS = {
    "scenario": ["seed", "horizon_s", "tasks", "drain_s", "poll_tick_s"],
    "population": ["users", "balance", "broke_fraction", "broke_balance", "topup_amount"],
    "arrivals": ["rate_per_hour", "daily_amplitude", "burst_every_s", "burst_size"],
    "mix": [
        "image",
        "video",
        "audio",
        "chat",
        "tool_chat",
        "chat_prompt_tokens",
        "chat_max_output_tokens",
        "chat_failure",
        "models",
    ],
    "behaviour": ["retry_failed", "max_retries", "patience_s"],
    "farm": ["capacity", "image_s", "callback_delay_s", "lost_job", "early", "no_urls"],
    "policy": [
        "price_multiplier",
        "price_overrides",
        "refund_classes",
        "chat_reserve_margin",
        "submit_retries",
        "poll_interval_s",
        "recheck_backoff_s",
        "stuck_after_s",
        "timeout_s",
        "duplicate_window_s",
    ],
}
SCRIPT_KEYS = [
    "at",
    "user",
    "amount",
    "gen_s",
    "task",
    "chat",
    "prompt_tokens",
    "max_output_tokens",
    "completion_tokens",
]
STEP_FACTOR = 20  # simulation events per poll tick, generously (poller, monitor, a few arrivals and callbacks)


def _one_line_naming(exc: RivyaError, source: str) -> None:
    assert "\n" not in exc.message and source in exc.message, exc.message


def _run_to_the_end(text: str, source: str) -> None:
    try:
        sc = parse_scenario(text, source, "extreme")
        run = Run(sc)
    except ScenarioError as exc:
        _one_line_naming(exc, source)
        return
    run.start(None)
    stop, ended = run.env.event(), []

    def deadline() -> float:
        if not ended:
            ended.append(run.env.now)
        return ended[0] + drain_seconds(sc)

    run.env.process(run.monitor(stop, deadline, None))
    budget = STEP_FACTOR * MAX_RUN_TICKS // 1000  # far below the cap: these runs are small
    steps = 0
    try:
        while not stop.triggered:
            run.env.step()
            steps += 1
            assert steps < budget, f"{steps} steps at t={run.env.now} and still running"
    except ScenarioError as exc:  # a script step refused while playing: one line, naming the file
        _one_line_naming(exc, source)


def _each_value(values: list[str], check) -> None:
    """check(value) for every value; a failure names the value it failed on."""
    for value in values:
        try:
            check(value)
        except AssertionError as exc:
            raise AssertionError(f"value {value!r}: {exc}") from exc


# Every key with every extreme value (the grids are finite and small enough to run whole), one
# test a key.
@pytest.mark.parametrize(
    "where", sorted((s, k) for s, ks in SCENARIO_KEYS.items() for k in ks), ids=lambda where: ".".join(where)
)
def test_a_scenario_key_with_an_extreme_value_is_refused_in_one_line_or_runs_to_its_end(where):
    section, key = where

    def check(value: str) -> None:
        line = f"{key} = {value}"
        if section == "scenario":
            text = (
                ARRIVALS.replace("[population]", f"{line}\n[population]")
                if key not in ARRIVALS
                else "\n".join(line if ln.startswith(f"{key} =") else ln for ln in ARRIVALS.splitlines())
            )
        elif section == "population" and key == "users":
            text = ARRIVALS.replace("users = 2", line)
        else:
            text = ARRIVALS + f"[{section}]\n{line}\n"
        _run_to_the_end(text, "extreme.toml")

    _each_value(EXTREMES, check)


@pytest.mark.parametrize("key", SCRIPT_KEYS)
def test_a_script_step_with_an_extreme_value_is_refused_in_one_line_or_runs_to_its_end(key):
    def check(value: str) -> None:
        steps = [dict(step) for step in STEPS]
        steps[STEP_OF.get(key, 0)][key] = value
        text = SCRIPTED + "".join("[[script]]\n" + "".join(f"{k} = {v}\n" for k, v in step.items()) for step in steps)
        _run_to_the_end(text, "extreme.toml")

    _each_value(EXTREMES, check)


POLICY_EXTREMES = EXTREMES + ["{image = inf}", "{image = 1e300}", "[1e300]", "[inf]", '[["user"]]', '[{a = "user"}]']


@pytest.mark.parametrize("key", SCENARIO_KEYS["policy"])
def test_a_policy_file_with_an_extreme_value_is_refused_in_one_line_or_bounded(key, tmp_path):
    path = tmp_path / "extreme.toml"

    def check(value: str) -> None:
        path.write_text(f"[policy]\n{key} = {value}\n")
        try:
            policy = BillingPolicy.load(path)
        except PolicyError as exc:
            _one_line_naming(exc, str(path))
            return
        for v in policy.to_dict().values():  # whatever was accepted is a finite number within the year
            for x in v.values() if isinstance(v, dict) else v if isinstance(v, list) else [v]:
                if isinstance(x, int | float) and not isinstance(x, bool):
                    assert 0 <= x <= 1e9, (key, value, x)

    _each_value(POLICY_EXTREMES, check)
