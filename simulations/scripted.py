"""Scripted QA stories: a scenario's `[[script]]` events played at exact times.

Actions: `submit` (user index, model, prompt, params; `outcome` — succeeded,
failed, lost, no_urls — with `error_code`/`failure_class`, `gen_s`,
`submit_fault` pin what the provider will do; `auto_callbacks = false` leaves
every callback to the script), `callback_early` (an early 'succeeded' callback
without URLs, now), `callback_progress` (a 'running' callback), `callback`
(the provider sends its real callback now), `callback_repeat` (the latest
callback again, same webhook id: a duplicate delivery), `lose_next_callback`
(the provider's next real callback for the task is dropped), `poll` (one
polling sweep), `recheck` (a user/support re-check), `grant`, `chat` (a chat
turn: reserve for `prompt_tokens` + `max_output_tokens`, settle on
`completion_tokens` after `gen_s`, or fail when `outcome = "failed"`).
`task = N` refers to the N-th scripted submit, `chat = N` (on a submit) to the
N-th scripted chat turn whose tool call the task is. A submit attaches the
files its model requires (small, verified: a story does not carry uploads).
"""

from __future__ import annotations

from typing import Any

from rivya_core import rules
from rivya_core.domain import InsufficientCredits, RivyaError
from rivya_core.validation import GenerationRequest, Reference

from .scenarios import ScenarioError


def play(run: Any):
    env, svc, farm = run.env, run.svc, run.farm
    users = run.population.user_ids
    chats: list[int] = []  # message id of each scripted chat turn
    for i, ev in enumerate(sorted(run.sc.script, key=lambda e: e.at)):
        if ev.at > env.now:
            yield env.timeout(ev.at - env.now)
        where = f"{run.sc.path}: key 'script[{i}]'"
        if ev.action in ("submit", "chat", "grant") and ev.user >= len(users):
            raise ScenarioError(f"{where}.user: only {len(users)} users")
        if ev.action == "submit":
            spec = run.catalog.get(ev.model)
            if spec is None:
                raise ScenarioError(f"{where}.model: no such model {ev.model!r}")
            if ev.chat and not 1 <= ev.chat <= len(chats):
                raise ScenarioError(f"{where}.chat: refers to scripted chat turn #{ev.chat}, which has not happened")
            provider = farm.providers[spec.provider]
            forced = {
                "outcome": ev.outcome,
                "gen_s": ev.gen_s or None,
                "submit_fault": ev.submit_fault,
                "auto_callbacks": ev.auto_callbacks,
                "queue_s": ev.queue_s,
            }
            if ev.error_code:
                forced["error"] = (
                    ev.error_code,
                    ev.error_message or f"{ev.error_code} (scripted)",
                    ev.failure_class or "provider",
                )
            # the task id is known only after submit; the provider is told by its task_ref
            next_ref = rules.task_ref(run.store.last_id("ai_task") + 1)
            provider.scripted[next_ref] = forced
            try:
                task = svc.submit(
                    users[ev.user],
                    GenerationRequest(spec.id, ev.prompt, dict(ev.params), _required_files(spec)),
                    chat_message_id=chats[ev.chat - 1] if ev.chat else None,
                )
            except RivyaError as exc:
                raise ScenarioError(f"{where}: submit refused ({exc.code}: {exc.message})") from None
            run.script_tasks.append(task.id)
            run.population.task_sources["script"] += 1
            continue
        if ev.action == "chat":
            chats.append(_chat_turn(run, ev, users[ev.user], where))
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
            continue  # the provider never took the job (refused for credits, submission failed): nothing to send
        elif ev.action == "callback_early":
            farm.providers[_provider_of(farm, job)].send_early_now(job)
        elif ev.action == "callback_progress":
            farm.providers[_provider_of(farm, job)].send_progress_now(job)
        elif ev.action == "callback_repeat":
            farm.providers[_provider_of(farm, job)].send_repeat_now(job)
        elif ev.action == "lose_next_callback":
            job.lose_next += 1
        elif ev.action == "callback":
            farm.providers[_provider_of(farm, job)].send_final_now(job)


def _required_files(spec: Any) -> tuple[Reference, ...]:
    """The files a model requires, small and verified (a story does not carry uploads)."""
    return tuple(
        Reference(r.kind, f"scripted.{r.kind}", 1024, *((10.0, 10.0) if r.kind == "audio" else ()))
        for r in spec.references
        if r.required
    )


def _chat_turn(run: Any, ev: Any, user_id: int, where: str) -> int:
    """Open a session and reserve the turn now; settle (or fail) it gen_s later. Returns the
    message id (0 when the reservation was refused for credits)."""
    svc = run.svc
    try:
        session = svc.open_chat(user_id, ev.model)
    except RivyaError as exc:
        raise ScenarioError(f"{where}.model: {exc.message}") from None
    try:
        msg = svc.chat_turn_reserve(session.id, ev.prompt, ev.prompt_tokens, ev.max_output_tokens)
    except InsufficientCredits:
        return 0
    pop = run.population
    pop.open_chats += 1

    def settle():
        yield run.env.timeout(ev.gen_s)
        if ev.outcome == "failed":
            svc.chat_turn_fail(msg.id, ev.error_code or "model_error")
        else:
            svc.chat_turn_settle(msg.id, ev.prompt_tokens, ev.completion_tokens)
        pop.open_chats -= 1

    run.env.process(settle())
    return msg.id


def _provider_of(farm: Any, job: Any) -> str:
    return job.upstream_id.rsplit("-", 1)[0]
