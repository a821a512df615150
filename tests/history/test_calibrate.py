"""Calibrate: fitted from a simulation whose true parameters are known, the estimates recover them."""

from __future__ import annotations

import math
import tomllib

import pytest

from rivya_core.stores.db import open_reader
from simulations.__main__ import main
from simulations.calibrate import calibrate
from simulations.runner import run_scenario
from simulations.scenarios import load_scenario, parse_scenario

TRUTH = """
[scenario]
name = "known"
seed = 11
horizon_s = 0
tasks = 1800

[population]
users = 80
balance = [3000, 6000]
broke_fraction = 0.0

[arrivals]
rate_per_hour = 1200

[mix]
image = 0.5
video = 0.2
audio = 0.1
chat = 0.15
tool_chat = 0.05
chat_failure = 0.05

[behaviour]
retry_failed = 0
resubmit_running = 0
duplicate_heavy = 0
heed_recheck = 0

[farm]
capacity = 1000
image_s = [4, 20]
video_s = [60, 600]
audio_s = [10, 90]
submit_error = 0.03
content_policy = 0.05
model_error = 0.04
lost_job = 0.02
early = 0.2
lost = 0.1
duplicate = 0.15
callback_delay_s = [0.5, 2.5]
"""


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("calibrate")
    sc = parse_scenario(TRUTH, "<known>", "known")
    url = f"sqlite:///{tmp / 'known.db'}"
    run_scenario(sc, url)
    engine = open_reader(url)
    try:
        yield sc, calibrate(engine), url, tmp
    finally:
        engine.dispose()


def _within(est, truth: float, sigmas: float = 4.0):
    se = est.se if est.se else math.sqrt(max(truth * (1 - truth), 1e-9) / max(est.n, 1))
    assert abs(est.value - truth) <= sigmas * se + 1e-9, (est, truth)


def test_rates_are_recovered_within_their_sampling_error(known):
    sc, cal, _, _ = known
    e = cal.estimates
    for cat in ("image", "video", "audio", "chat", "tool_chat"):
        _within(e[f"mix.{cat}"], getattr(sc.mix, cat))
    _within(e["mix.chat_failure"], 0.05)
    for p in ("lumen", "kinetica"):
        _within(e[f"farm.providers.{p}.submit_error"], 0.03)
        _within(e[f"farm.providers.{p}.lost_job"], 0.02)
        _within(e[f"farm.providers.{p}.content_policy"], 0.05)
        _within(e[f"farm.providers.{p}.model_error"], 0.04)
        _within(e[f"farm.providers.{p}.early"], 0.2)
        _within(e[f"farm.providers.{p}.lost"], 0.1)
        _within(e[f"farm.providers.{p}.duplicate"], 0.15)
    rate = e["arrivals.rate_per_hour"]
    assert abs(rate.value - 1200) <= 4 * rate.se
    assert e["population.users"].value == 80


def test_time_distributions_come_back_as_quantiles(known):
    _, cal, _, _ = known
    lumen = cal.scenario.provider_config("lumen")
    kinetica = cal.scenario.provider_config("kinetica")
    assert len(lumen.image_s.points) == 11
    assert 4.0 <= lumen.image_s.low and lumen.image_s.high <= 20.0
    assert abs(cal.estimates["farm.providers.lumen.image_s.median"].value - 12.0) < 1.5
    assert abs(cal.estimates["farm.providers.kinetica.video_s.median"].value - 330.0) < 45.0
    assert 60.0 <= kinetica.video_s.low and kinetica.video_s.high <= 600.0
    assert abs(cal.estimates["farm.providers.lumen.callback_delay_s.median"].value - 1.5) < 0.2


def test_the_written_scenario_runs_and_lands_near_the_history(known, capsys):
    _, cal, url, tmp = known
    out = tmp / "calibrated.toml"
    assert main(["calibrate", "--db", url, "-o", str(out)]) == 0
    assert main(["calibrate", "--db", url, "-o", str(out)]) == 2  # no overwrite without --force
    capsys.readouterr()
    doc = tomllib.loads(out.read_text())
    assert (
        abs(doc["scenario"]["tasks"] - 1800) <= 18
    )  # a repeat of user, model and prompt within an hour reads as a retry
    calibrated = load_scenario(out)
    again = run_scenario(calibrated, f"sqlite:///{tmp / 'again.db'}", seed=5)
    engine = open_reader(url)
    try:
        original = run_scenario(parse_scenario(TRUTH, "<known>", "known"), f"sqlite:///{tmp / 'orig2.db'}", seed=5)
    finally:
        engine.dispose()
    # KPIs of the calibrated scenario against a fresh run of the truth: failure rate within 3 points
    a, b = again.kpis["user_visible_failure_rate"], original.kpis["user_visible_failure_rate"]
    assert abs(a - b) < 0.03, (a, b)
    assert abs(again.tasks - original.tasks) / original.tasks < 0.1
