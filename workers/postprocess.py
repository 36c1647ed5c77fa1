"""Post-process stage: output guardrails, then the terminal outcome of a request that got an answer.

Per answer, in order: PII redaction (the redactor behind :class:`~workers.detectors.redaction.Redactor`);
blocked terms (the
answer is refused, ``denied`` / ``output_blocked``); structured output when ``response_format`` asks for JSON
(validated, repaired once, else ``failed`` / ``structured_output_invalid``); the length limit (free text is cut,
JSON that is too long fails instead, since cutting it would break it). Then ``finish(OK | CACHE_HIT)``: the runner
publishes the response to ``<prefix>.responses`` and ``reply_to``, and forwards the request to audit.

Online evaluation: a sampled request (``eval_sample_rate``, by request id) gets the evaluators' verdicts
(:mod:`workers.evaluators`) on ``postprocess.evaluation`` whatever its outcome here, and the response carries them
to the ledger.

Hook point: ``PostprocessContext.after_finish`` coroutines run on the batch's finished answers (cache fill,
conversation-memory append are wired there by the stage shell); a failing hook is logged, never fails a response.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property

from schemas.envelope import Envelope, Passage, PostprocessResult, Status
from workers import evaluators, structured_output
from workers.context import StageContext
from workers.detectors.redaction import BasicRedactor, Redactor

NAME = "postprocess"
log = logging.getLogger(__name__)

FinishHook = Callable[[list[Envelope], StageContext], Awaitable[None]]


@dataclass(frozen=True)
class PostprocessContext(StageContext):
    redactor: Redactor = field(default_factory=BasicRedactor)
    blocked_terms: tuple[str, ...] = ()
    max_answer_chars: int = 32_000
    after_finish: tuple[FinishHook, ...] = ()
    eval_sample_rate: float = 1.0
    eval_grounded_min: float = 0.8

    @cached_property
    def blocked_pattern(self) -> re.Pattern[str] | None:
        terms = [t.strip() for t in self.blocked_terms if t.strip()]
        if not terms:
            return None
        return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in terms) + r")(?!\w)", re.IGNORECASE)


def guard(env: Envelope, ctx: PostprocessContext) -> None:
    """Apply the output guardrails to one envelope and give it its terminal outcome."""
    post = env.postprocess = PostprocessResult()
    if env.answer is None:
        env.finish(Status.FAILED, code="no_answer", stage=NAME,
                   message="the request reached post-process without an answer")
        return
    answer, counts = ctx.redactor.redact(env.answer)
    if counts:
        post.actions.append("pii_redacted:" + ",".join(f"{k}={v}" for k, v in sorted(counts.items())))
    blocked = ctx.blocked_pattern
    if blocked is not None and (hits := blocked.findall(answer)):
        post.actions.append(f"blocked_terms:{len(hits)}")
        env.answer = None
        env.finish(Status.DENIED, code="output_blocked", stage=NAME,
                   message="the answer contained a term this deployment does not allow")
        return
    schema = structured_output.wanted_schema(env.request.params.response_format)
    if schema is not None:
        checked = structured_output.check(answer, schema)
        post.actions.extend(checked.actions)
        post.structured_output_valid = checked.answer is not None
        if checked.answer is None:
            env.answer = None
            env.finish(Status.FAILED, code="structured_output_invalid", stage=NAME, message=checked.error[:500])
            return
        answer = checked.answer
        if len(answer) > ctx.max_answer_chars:
            env.answer = None
            env.finish(Status.FAILED, code="output_too_long", stage=NAME,
                       message=f"the JSON answer has {len(answer)} characters, over the {ctx.max_answer_chars} limit")
            return
    elif len(answer) > ctx.max_answer_chars:
        post.actions.append(f"truncated:{len(answer)}->{ctx.max_answer_chars}")
        answer = answer[:ctx.max_answer_chars]
    env.answer = answer
    hit = env.cache is not None and env.cache.outcome == "hit"
    env.finish(Status.CACHE_HIT if hit else Status.OK, stage=NAME)


async def process(batch: list[Envelope], ctx: PostprocessContext) -> list[Envelope]:
    pctx = ctx
    for env in batch:
        guard(env, pctx)
        if env.postprocess is not None and evaluators.sampled(env.request_id, pctx.eval_sample_rate):
            env.postprocess.evaluation = evaluators.evaluate(env, grounded_min=pctx.eval_grounded_min)
    answered = [env for env in batch if env.outcome and env.outcome.status in (Status.OK, Status.CACHE_HIT)]
    for hook in pctx.after_finish:
        try:
            await hook(answered, pctx)
        except Exception:
            log.exception("post-process hook %s failed; the responses go out regardless",
                          getattr(hook, "__name__", hook))
    for env in batch:
        _slim(env)
    return batch


def _slim(env: Envelope) -> None:
    """What only the stages up to here read leaves the envelope: the audit stage records the passages' ids, not
    their text, and nothing after the cache fill reads the session's turns. The audit hop then decodes a smaller
    record (passages are most of a grounded request's bytes)."""
    retrieval = env.retrieval
    if retrieval is None or env.outcome is None:
        return
    if retrieval.passages and any(p.text for p in retrieval.passages):
        retrieval.passages = [Passage(doc_id=p.doc_id, score=p.score, text="") for p in retrieval.passages]
    if retrieval.session_turns:
        retrieval.session_turns = []
