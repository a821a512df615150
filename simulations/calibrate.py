"""Calibrate a scenario from recorded history.

`calibrate(engine, since, until)` fits what a scenario file can say from the
rows of a window, and returns the fitted Scenario with a report of each
estimate, its sample size and its standard error:

- arrivals: first attempts per hour (a task that repeats the same user, model
  and prompt within an hour is a retry, not an arrival; a chat turn's tool task
  is part of its turn), and for windows of a day or more the amplitude of the
  daily pattern (least squares on the simulation's sine);
- population: accounts, their first grant (balance range; the share that
  starts broke, below BROKE_BELOW credits, and their range), top-ups per
  insufficient-credit refusal and their median size;
- mix: category and chat shares of arrivals, each model's weight in its
  category, chat prompt tokens, answer length (recovered from reservations),
  chat failure and overrun rates;
- per provider: generation time per category and callback delay as empirical
  quantiles (the provider's own record `upstream_job` when the database has
  it: started to done, done to callback; otherwise submission to the first
  final callback), submission faults by kind, outcome faults (lost job,
  content policy, model error, upstream timeout, success without URLs; each
  conditional on the ones the farm draws before it), and callback faults
  (early, lost, duplicate, progress reordering, forged, stale, malformed);
- the policy the history was recorded under (a simulation database's own) and
  whether callbacks were on.

Not fitted (the scenario keeps its defaults, and the report says so): user
behaviours (retries, resubmits, heavy duplicates, heeding re-checks,
patience), outage windows, provider capacity.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, inspect, select

from rivya_core.catalog import default_catalog
from rivya_core.domain import INSUFFICIENT_CREDITS, EntryType, EventKind
from rivya_core.policy import DEFAULT_POLICY
from rivya_core.read.queries import connect
from rivya_core.stores import schema

from .farm import CONTENT_POLICY, HUNG_CANCELED, MODEL_ERROR, UPSTREAM_TIMEOUT
from .history import HistoryError, seconds
from .scenarios import Arrivals, Behaviour, Mix, Population, ProviderConfig, Range, Scenario, parse_scenario
from .writer import read_sim_runs, upstream_job

BROKE_BELOW = 25
RETRY_WITHIN_S = 3600.0
QUANTILES = 11  # q0, q10, ..., q100
MIN_SAMPLES = 5


@dataclass
class Estimate:
    value: float
    n: int
    se: float | None = None
    note: str = ""


@dataclass
class Calibration:
    scenario: Scenario
    estimates: dict[str, Estimate] = field(default_factory=dict)
    not_fitted: list[str] = field(default_factory=list)

    def to_toml(self) -> str:
        lines = [
            "# Calibrated from recorded history by `python -m simulations calibrate`.",
            "# estimate (sample size, standard error):",
        ]
        for k, e in self.estimates.items():
            se = f", se {e.se:.4g}" if e.se is not None else ""
            lines.append(f"#   {k} = {e.value:.6g} (n {e.n}{se}){' ' + e.note if e.note else ''}")
        lines.append("# not fitted (defaults kept): " + "; ".join(self.not_fitted))
        return "\n".join(lines) + "\n" + self.scenario.to_toml()


def _hung(job) -> bool:
    """The provider lost the job: it hangs (state `lost`), or it hung until our cancel or its
    deadline stopped it (the farm records that as HUNG_CANCELED)."""
    return job.state == "lost" or (job.error_code, job.error_message) == HUNG_CANCELED[:2]


def _rate(k: int, n: int) -> Estimate:
    p = k / n if n else 0.0
    return Estimate(p, n, math.sqrt(p * (1 - p) / n) if n else None)


def _quantiles(xs: list[float]) -> Range | None:
    if len(xs) < MIN_SAMPLES:
        return None
    xs = sorted(xs)
    if len(xs) == 1 or xs[0] == xs[-1]:
        return Range(xs[0], xs[-1])
    qs = statistics.quantiles(xs, n=QUANTILES - 1, method="inclusive")
    pts = [xs[0], *qs, xs[-1]]
    pts = [round(max(0.0, p), 3) for p in pts]
    for i in range(1, len(pts)):
        pts[i] = max(pts[i], pts[i - 1])
    return Range(pts[0], pts[-1], tuple(pts))


def calibrate(
    engine: Engine, since: datetime | None = None, until: datetime | None = None, name: str = "calibrated"
) -> Calibration:
    cat = default_catalog()
    t, m, s, L, e, cb = (
        schema.ai_task.c,
        schema.chat_message.c,
        schema.chat_session.c,
        schema.credit_ledger.c,
        schema.task_event.c,
        schema.provider_callback.c,
    )

    def window(q, col):
        if since is not None:
            q = q.where(col >= since)
        if until is not None:
            q = q.where(col < until)
        return q

    tables = set(inspect(engine).get_table_names())
    with connect(engine) as conn:
        tasks = list(
            conn.execute(
                window(
                    select(
                        t.id,
                        t.user_id,
                        t.model,
                        t.category,
                        t.provider,
                        t.prompt,
                        t.status,
                        t.error_code,
                        t.upstream_task_id,
                        t.created_at,
                        t.submitted_at,
                        t.chat_message_id,
                    ),
                    t.created_at,
                ).order_by(t.id)
            )
        )
        chats = list(
            conn.execute(
                window(
                    select(
                        m.id,
                        s.user_id,
                        s.model,
                        m.prompt_tokens,
                        m.completion_tokens,
                        m.reserved_credits,
                        m.status,
                        m.created_at,
                    )
                    .join(schema.chat_session, s.id == m.session_id)
                    .where(m.role == "user"),
                    m.created_at,
                ).order_by(m.id)
            )
        )
        if not tasks and not chats:
            raise HistoryError("no task or chat turn in that window: nothing to calibrate from", code="history_empty")
        accounts = list(conn.execute(select(schema.account.c.id, schema.account.c.created_at)))
        grants = list(
            conn.execute(
                select(L.user_id, L.amount, L.created_at).where(L.entry_type == EntryType.GRANT.value).order_by(L.id)
            )
        )
        task_ids = {x.id for x in tasks}
        events: dict[int, list[Any]] = defaultdict(list)
        for ev in conn.execute(
            window(
                select(e.task_id, e.at, e.kind, e.detail).where(
                    e.kind.in_([EventKind.CALLBACK.value, EventKind.SUBMIT_FAILED.value])
                ),
                e.at,
            ).order_by(e.id)
        ):
            if ev.task_id in task_ids:
                events[ev.task_id].append(ev)
        unlinked = Counter(
            (r.provider, r.outcome)
            for r in conn.execute(window(select(cb.provider, cb.outcome).where(cb.task_id.is_(None)), cb.received_at))
        )
        received = {r.id: r.received_at for r in conn.execute(window(select(cb.id, cb.received_at), cb.received_at))}
        jobs = {}
        if upstream_job.name in tables:
            j = upstream_job.c
            for r in conn.execute(
                select(
                    j.provider,
                    j.upstream_task_id,
                    j.state,
                    j.result_urls,
                    j.error_code,
                    j.error_message,
                    j.submitted_at,
                    j.started_at,
                    j.done_at,
                )
            ):
                jobs[(r.provider, r.upstream_task_id)] = r
    recorded = None
    if "sim_run" in tables:
        runs = read_sim_runs(engine)
        if runs:
            rec = runs[-1]
            recorded = parse_scenario(rec["scenario_toml"], f"<recorded {rec['scenario_name']}>", rec["scenario_name"])
    est: dict[str, Estimate] = {}

    # --- arrivals ---------------------------------------------------------------------
    times = [seconds(x.created_at) for x in tasks if x.chat_message_id is None] + [seconds(c.created_at) for c in chats]
    start = seconds(since) if since is not None else min(times)
    end = seconds(until) if until is not None else max(times)
    span = max(end - start, 1.0)
    last_seen: dict[tuple[int, str, str], float] = {}
    first_attempts = []
    for x in tasks:
        if x.chat_message_id is not None:
            continue
        key, at = (x.user_id, x.model, x.prompt), seconds(x.created_at)
        if key not in last_seen or at - last_seen[key] > RETRY_WITHIN_S:
            first_attempts.append(x)
        last_seen[key] = at
    arrivals_n = len(first_attempts) + len(chats)
    rate = arrivals_n / span * 3600.0
    est["arrivals.rate_per_hour"] = Estimate(rate, arrivals_n, math.sqrt(arrivals_n) / span * 3600.0)
    pattern, amplitude = "flat", 0.6
    if span >= 86400.0:
        amplitude = _daily_amplitude(times, start, end)
        pattern = "daily" if amplitude > 0.05 else "flat"
        est["arrivals.daily_amplitude"] = Estimate(amplitude, arrivals_n)
    arrivals = Arrivals(rate_per_hour=round(rate, 3), pattern=pattern, daily_amplitude=round(min(1.0, amplitude), 3))

    # --- population -------------------------------------------------------------------
    first_grant: dict[int, int] = {}
    topups = []
    for g in grants:
        if g.user_id not in first_grant:
            first_grant[g.user_id] = int(g.amount)
        elif (since is None or g.created_at >= since) and (until is None or g.created_at < until):
            topups.append(int(g.amount))
    balances = [first_grant.get(a.id, 0) for a in accounts]
    broke = [b for b in balances if b < BROKE_BELOW]
    rich = [b for b in balances if b >= BROKE_BELOW] or balances
    refusals = sum(1 for x in tasks if x.error_code == INSUFFICIENT_CREDITS) + sum(
        1 for c in chats if c.status == "refused"
    )
    est["population.users"] = Estimate(len(accounts), len(accounts))
    est["population.broke_fraction"] = _rate(len(broke), len(balances))
    if refusals:
        est["population.topup_probability"] = Estimate(min(1.0, len(topups) / refusals), refusals)
    population = Population(
        users=max(1, len(accounts)),
        balance=Range(float(min(rich)), float(max(rich))) if rich else Range(0, 0),
        broke_fraction=round(len(broke) / len(balances), 4) if balances else 0.0,
        broke_balance=Range(float(min(broke)), float(max(broke))) if broke else Population().broke_balance,
        topup_probability=round(min(1.0, len(topups) / refusals), 4) if refusals else Population().topup_probability,
        topup_amount=int(statistics.median(topups)) if topups else Population().topup_amount,
    )

    # --- mix --------------------------------------------------------------------------
    tool_msgs = {x.chat_message_id for x in tasks if x.chat_message_id is not None}
    by_cat = Counter(x.category for x in first_attempts)
    n_chat = sum(1 for c in chats if c.id not in tool_msgs)
    n_tool = len(chats) - n_chat
    for k, v in (
        *((c, by_cat.get(c, 0)) for c in ("image", "video", "audio")),
        ("chat", n_chat),
        ("tool_chat", n_tool),
    ):
        est[f"mix.{k}"] = _rate(v, arrivals_n)
    models = Counter(x.model for x in first_attempts) + Counter(c.model for c in chats)
    weights = {}
    for mid, n in sorted(models.items()):
        spec = cat.get(mid)
        if spec is None:
            continue
        pool_total = sum(
            v for k2, v in models.items() if cat.get(k2) is not None and cat.get(k2).category == spec.category
        )
        weights[mid] = round(n / pool_total, 4) if pool_total else 0.0
    policy = recorded.policy if recorded is not None else DEFAULT_POLICY
    chat_kw: dict[str, Any] = {}
    settled = [c for c in chats if c.status in ("settled", "failed")]
    if chats:
        pts = [int(c.prompt_tokens or 0) for c in chats]
        chat_kw["chat_prompt_tokens"] = Range(float(min(pts)), float(max(pts)))
        from .fork import _max_output_tokens

        outs = []
        overrun = 0
        for c in settled:
            spec = cat.get(c.model)
            if spec is None or not c.reserved_credits:
                continue
            mo = _max_output_tokens(spec, int(c.prompt_tokens or 0), int(c.reserved_credits), policy)
            outs.append(mo)
            overrun += int((c.completion_tokens or 0) > mo)
        if outs:
            chat_kw["chat_max_output_tokens"] = max(1, int(statistics.median(outs)))
            est["mix.chat_overrun"] = _rate(overrun, len(outs))
            chat_kw["chat_overrun"] = round(overrun / len(outs), 4)
        failed = sum(1 for c in settled if c.status == "failed")
        est["mix.chat_failure"] = _rate(failed, len(settled))
        chat_kw["chat_failure"] = round(failed / len(settled), 4) if settled else 0.0
    mix = Mix(
        image=round(by_cat.get("image", 0) / arrivals_n, 4),
        video=round(by_cat.get("video", 0) / arrivals_n, 4),
        audio=round(by_cat.get("audio", 0) / arrivals_n, 4),
        chat=round(n_chat / arrivals_n, 4),
        tool_chat=round(n_tool / arrivals_n, 4),
        models=weights,
        **chat_kw,
    )

    # --- providers --------------------------------------------------------------------
    providers: dict[str, ProviderConfig] = {}
    callbacks_seen = False
    for pname in sorted({x.provider for x in tasks}):
        mine = [x for x in tasks if x.provider == pname and x.error_code != INSUFFICIENT_CREDITS]
        attempts = len(mine)
        faults = Counter()
        for x in mine:
            for ev in events.get(x.id, ()):
                if ev.kind == EventKind.SUBMIT_FAILED and isinstance(ev.detail, dict):
                    faults[ev.detail.get("fault", "error")] += 1
        kw: dict[str, Any] = {}
        left = attempts  # the farm draws refused, then error, then timeout, each on what is left
        for kind in ("refused", "error", "timeout"):
            r = _rate(faults[kind], left)
            est[f"farm.providers.{pname}.submit_{kind}"] = r
            kw[f"submit_{kind}"] = round(r.value, 4)
            left -= faults[kind]
        submitted = [x for x in mine if x.upstream_task_id]
        outcomes = Counter()
        gen: dict[str, list[float]] = defaultdict(list)
        delays, done_jobs = [], 0
        cb_stats = Counter()
        for x in submitted:
            job = jobs.get((pname, x.upstream_task_id))
            evs = [ev for ev in events.get(x.id, ()) if ev.kind == EventKind.CALLBACK and isinstance(ev.detail, dict)]
            callbacks_seen = callbacks_seen or bool(evs)
            finals = [
                ev for ev in evs if ev.detail.get("outcome") != "deferred" and ev.detail.get("state") != "running"
            ]
            if job is not None:
                if _hung(job):
                    outcomes["lost"] += 1
                elif job.state == "failed":
                    outcomes[job.error_code or MODEL_ERROR[0]] += 1
                elif job.state == "succeeded":
                    outcomes["ok" if job.result_urls else "no_urls"] += 1
                if job.done_at is not None and job.started_at is not None:
                    gen[x.category].append(seconds(job.done_at) - seconds(job.started_at))
                if job.state in ("succeeded", "failed"):
                    done_jobs += 1
                    if finals and job.done_at is not None:
                        at = received.get(finals[0].detail.get("callback_id"))
                        if at is not None:
                            delays.append(max(0.0, seconds(at) - seconds(job.done_at)))
            elif finals:  # no provider record: submission to the first final callback
                gen[x.category].append(seconds(finals[0].at) - seconds(x.submitted_at or x.created_at))
                done_jobs += 1
            # early: deferred before the job was done (a final success without URLs is deferred too)
            done_s = seconds(job.done_at) if job is not None and job.done_at is not None else math.inf
            cb_stats["early"] += any(ev.detail.get("outcome") == "deferred" and seconds(ev.at) < done_s for ev in evs)
            cb_stats["progress"] += any(ev.detail.get("state") == "running" for ev in evs)
            if finals:
                cb_stats["final"] += 1
                ids = Counter(ev.detail.get("webhook_id") for ev in finals)
                cb_stats["duplicate"] += any(n > 1 for n in ids.values())
        n = len(submitted)
        if jobs:
            lost = outcomes["lost"]
            rest = n - lost
            est[f"farm.providers.{pname}.lost_job"] = _rate(lost, n)
            kw["lost_job"] = round(lost / n, 4) if n else 0.0
            for key, code in (
                ("content_policy", CONTENT_POLICY[0]),
                ("model_error", MODEL_ERROR[0]),
                ("upstream_timeout", UPSTREAM_TIMEOUT[0]),
                ("no_urls", "no_urls"),
            ):
                r = _rate(outcomes[code], rest)
                est[f"farm.providers.{pname}.{key}"] = r
                kw[key] = round(r.value, 4)
                rest -= outcomes[code]
        for cat_name, xs in gen.items():
            q = _quantiles(xs)
            if q is not None:
                kw[f"{cat_name}_s"] = q
                est[f"farm.providers.{pname}.{cat_name}_s.median"] = Estimate(statistics.median(xs), len(xs))
        q = _quantiles(delays)
        if q is not None:
            kw["callback_delay_s"] = q
            est[f"farm.providers.{pname}.callback_delay_s.median"] = Estimate(statistics.median(delays), len(delays))
        if n and callbacks_seen:
            stale = unlinked[(pname, "rejected_stale")]
            r = _rate(cb_stats["early"], n)
            est[f"farm.providers.{pname}.early"] = r
            kw["early"] = round(r.value, 4)
            r = _rate(cb_stats["progress"], n)
            est[f"farm.providers.{pname}.reorder"] = r
            kw["reorder"] = round(r.value, 4)
            if done_jobs:
                lost_cb = max(0, done_jobs - cb_stats["final"] - stale)
                r = _rate(lost_cb, done_jobs)
                est[f"farm.providers.{pname}.lost"] = r
                kw["lost"] = round(r.value, 4)
                sent = done_jobs - lost_cb
                r = _rate(stale, sent)
                est[f"farm.providers.{pname}.stale"] = r
                kw["stale"] = round(r.value, 4)
                r = _rate(cb_stats["duplicate"], cb_stats["final"])
                est[f"farm.providers.{pname}.duplicate"] = r
                kw["duplicate"] = round(r.value, 4)
                for key, outcome in (("forged", "rejected_signature"), ("malformed", "malformed")):
                    r = _rate(min(unlinked[(pname, outcome)], done_jobs), done_jobs)
                    est[f"farm.providers.{pname}.{key}"] = r
                    kw[key] = round(r.value, 4)
        if recorded is not None:
            kw["capacity"] = recorded.provider_config(pname).capacity
        providers[pname] = replace(ProviderConfig(), **kw)

    sc = Scenario(
        name=name,
        description=f"Calibrated from {len(tasks)} tasks and {len(chats)} chat turns "
        f"over {span / 3600:.1f} h of recorded history.",
        seed=1,
        horizon_s=round(span, 3),
        tasks=arrivals_n,
        callbacks=callbacks_seen or (recorded.callbacks if recorded is not None else True),
        poll_tick_s=recorded.poll_tick_s if recorded is not None else 10.0,
        population=population,
        arrivals=arrivals,
        mix=mix,
        behaviour=Behaviour(),
        providers=providers,
        policy=policy,
    )
    sc = parse_scenario(sc.to_toml(), f"<calibrated {name}>", name)  # what the file will hold
    not_fitted = [
        "behaviour (retries, resubmits, heavy duplicates, heeding re-checks, patience)",
        "outages",
        "provider capacity" + (" (taken from the recorded run)" if recorded is not None else ""),
    ]
    if not jobs:
        not_fitted.append(
            "outcome faults and callback delays (no provider record `upstream_job`; generation "
            "time is measured from submission to the first final callback)"
        )
    return Calibration(sc, est, not_fitted)


def _daily_amplitude(times: list[float], start: float, end: float) -> float:
    """Least-squares amplitude of hourly counts against the simulation's daily sine (its clock
    starts at midnight UTC, so the phase is the time of day)."""
    hours = max(1, int((end - start) // 3600))
    counts = Counter(int((tm - start) // 3600) for tm in times)
    xs, ys = [], []
    for h in range(hours):
        mid = start + (h + 0.5) * 3600.0
        xs.append(math.sin(2 * math.pi * (mid / 86400.0 - 0.25)))
        ys.append(counts.get(h, 0))
    mean = sum(ys) / len(ys)
    sxx = sum(x * x for x in xs)
    if not mean or not sxx:
        return 0.0
    return max(0.0, sum(x * y for x, y in zip(xs, ys, strict=True)) / sxx / mean)
