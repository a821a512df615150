"""Scripted QA stories: a scenario's `[[script]]` events played at exact times.

Actions: `submit` (user index, model, prompt; `outcome` and `gen_s` pin what the
provider will do), `callback_early` (an early 'succeeded' callback without
URLs, now), `lose_next_callback` (the provider's next real callback for the
task is dropped), `callback` (the provider sends its real callback now),
`poll` (one polling sweep), `recheck` (a user/support re-check), `grant`.
`task = N` refers to the N-th scripted submit.
"""

from __future__ import annotations

from typing import Any

from rivya_core import rules
from rivya_core.domain import RivyaError
from rivya_core.validation import GenerationRequest

from .scenarios import ScenarioError


def play(run: Any):
    env, svc, farm = run.env, run.svc, run.farm
    users = run.population.user_ids
    for i, ev in enumerate(sorted(run.sc.script, key=lambda e: e.at)):
        if ev.at > env.now:
            yield env.timeout(ev.at - env.now)
        where = f"{run.sc.path}: key 'script[{i}]'"
        if ev.action == "submit":
            spec = run.catalog.get(ev.model)
            if spec is None:
                raise ScenarioError(f"{where}.model: no such model {ev.model!r}")
            if ev.user >= len(users):
                raise ScenarioError(f"{where}.user: only {len(users)} users")
            provider = farm.providers[spec.provider]
            forced = {"outcome": ev.outcome, "gen_s": ev.gen_s or None}
            # the task id is known only after submit; the provider is told by its task_ref
            next_ref = rules.task_ref(run.store.last_id("ai_task") + 1)
            provider.scripted[next_ref] = forced
            try:
                task = svc.submit(users[ev.user], GenerationRequest(spec.id, ev.prompt, {}))
            except RivyaError as exc:
                raise ScenarioError(f"{where}: submit refused ({exc.code}: {exc.message})") from None
            run.script_tasks.append(task.id)
            continue
        if ev.action == "poll":
            svc.poll()
            continue
        if ev.action == "grant":
            svc.grant(users[ev.user], ev.amount, note="scripted grant", key=f"script-grant-{i}")
            continue
        if not 1 <= ev.task <= len(run.script_tasks):
            raise ScenarioError(f"{where}.task: refers to scripted submit #{ev.task}, which has not happened")
        task_id = run.script_tasks[ev.task - 1]
        job = farm.job_for_ref(rules.task_ref(task_id))
        if ev.action == "recheck":
            svc.recheck(task_id, reason="scripted recheck")
        elif job is None:
            raise ScenarioError(f"{where}.task: scripted submit #{ev.task} has no provider job")
        elif ev.action == "callback_early":
            farm.providers[_provider_of(farm, job)].send_early_now(job)
        elif ev.action == "lose_next_callback":
            job.lose_next += 1
        elif ev.action == "callback":
            farm.providers[_provider_of(farm, job)].send_final_now(job)


def _provider_of(farm: Any, job: Any) -> str:
    return job.upstream_id.rsplit("-", 1)[0]
