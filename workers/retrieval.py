"""Retrieval stage: attaches the tenant's most relevant passages (and the session's recent turns) to each request.

For a whole batch: one embedding call for every prompt, then one top-k search per tenant present in the batch —
a query only ever searches its own tenant's matrix. Which chunks a request may see (``Visibility``):

* labels: ``ctx.labels_for(env)`` — by default none, so only unlabelled chunks are visible. The stage runs before
  policy in the default route, so the principal's labels cannot come from the policy decision; the wiring may
  pass a function that derives them from the (signed) principal. Labelled chunks are never shown to a request
  whose labels are unknown.
* regions: ``env.policy.allowed_regions`` when a policy decision is already present and names regions; otherwise
  regions are not restricted here (the policy stage enforces residency before the model is called).

``confidence`` is the top passage's cosine score (0 when nothing passed ``min_score``). A failing embedder or
memory store degrades to "no passages" / "no turns" with a counter and a log line; the request goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas.envelope import Envelope, Passage, RetrievalResult
from schemas.errors import BackendError
from workers.cache import metrics
from workers.cache.verifier import PairVerifier
from workers.context import StageContext
from workers.embedding import Embedder, HashingEmbedder
from workers.memory import ConversationMemory
from workers.vectors.index import MemoryVectorIndex
from workers.vectors.protocol import VectorIndex
from workers.vectors.visibility import Visibility

NAME = "retrieval"
log = logging.getLogger(__name__)


def no_labels(env: Envelope) -> frozenset[str]:
    return frozenset()


@dataclass(frozen=True)
class RetrievalContext(StageContext):
    index: VectorIndex = field(default_factory=lambda: MemoryVectorIndex(256))
    embedder: Embedder = field(default_factory=HashingEmbedder)
    memory: ConversationMemory | None = None
    top_k: int = 4
    min_score: float = 0.15
    labels_for: Callable[[Envelope], frozenset[str]] = no_labels
    # The embedder sends text out of the pipeline (an HTTP service): only prompts the policy stage has governed
    # (redacted) may reach it. Set by the wiring from the embedder in use, whatever route a producer chose.
    embedder_remote: bool = False
    # Reorders the top_k passages by the cache's pair verifier (word alignment with the prompt; fit for the static
    # embedder). Recall@1 on the outsider questions: tune 70.2 % → 74.6 %, test 56.9 % → 54.9 %, so the wiring
    # leaves it off unless TOLLWAY_RETRIEVAL_RERANK=1; None keeps the cosine order.
    reranker: PairVerifier | None = None


def visibility_of(env: Envelope, ctx: RetrievalContext) -> Visibility:
    regions = frozenset(env.policy.allowed_regions) if env.policy and env.policy.allowed_regions else None
    return Visibility(labels=ctx.labels_for(env), regions=regions)


async def process(batch: list[Envelope], ctx: RetrievalContext) -> list[Envelope]:
    if ctx.embedder_remote:
        ungoverned = [env for env in batch if env.policy is None]
        for env in ungoverned:
            _policy_first(env)
        batch = [env for env in batch if env.policy is not None]
        if not batch:
            return ungoverned
    else:
        ungoverned = []
    for env in batch:
        env.retrieval = RetrievalResult()
    await _attach_passages(batch, ctx)
    await _attach_turns(batch, ctx)
    return [*batch, *ungoverned]


def _policy_first(env: Envelope) -> None:
    """Send a request the policy stage has not seen to policy first, then back here (the rest of its route kept):
    its prompt must be redacted before the remote embedder reads it."""
    rest = [stage for stage in env.route if stage != "policy"]
    env.route = ["policy", NAME, *rest]
    metrics.RETRIEVAL_POLICY_FIRST.inc()


async def _attach_passages(batch: list[Envelope], ctx: RetrievalContext) -> None:
    searchable = [env for env in batch if ctx.index.size(env.tenant) > 0]
    for env in batch:
        if ctx.index.size(env.tenant) == 0:
            assert env.retrieval is not None
            env.retrieval.skipped = "no documents indexed for this tenant"
    if not searchable:
        return
    try:
        vectors = await ctx.embedder.embed([env.request.prompt for env in searchable])
    except BackendError as exc:
        metrics.RETRIEVAL_ERRORS.labels("embed").inc()
        log.warning("retrieval skipped for %d request(s): embedder failed: %s", len(searchable), exc)
        for env in searchable:
            assert env.retrieval is not None
            env.retrieval.skipped = "embedder unavailable"
        return
    by_tenant: dict[str, list[int]] = {}
    for position, env in enumerate(searchable):
        by_tenant.setdefault(env.tenant, []).append(position)
    for tenant, positions in by_tenant.items():
        envs = [searchable[p] for p in positions]
        hits = ctx.index.search(tenant, vectors[positions], ctx.top_k, [visibility_of(e, ctx) for e in envs])
        for env, found in zip(envs, hits, strict=True):
            assert env.retrieval is not None
            passages = [Passage(doc_id=h.chunk.chunk_id, score=round(h.score, 4), text=h.chunk.text)
                        for h in found if h.score >= ctx.min_score]
            if ctx.reranker is not None and len(passages) > 1:
                reranker, prompt = ctx.reranker, env.request.prompt
                passages.sort(key=lambda p: reranker.score(prompt, p.text, p.score), reverse=True)
            env.retrieval.passages = passages
            env.retrieval.confidence = max((p.score for p in passages), default=0.0)


async def _attach_turns(batch: list[Envelope], ctx: RetrievalContext) -> None:
    with_session = [env for env in batch if env.request.session_id]
    if ctx.memory is None or not with_session:
        return
    try:
        turns = await ctx.memory.recent_turns_many([(env.tenant, env.request.session_id or "")
                                                    for env in with_session])
    except BackendError as exc:
        metrics.RETRIEVAL_ERRORS.labels("memory").inc()
        log.warning("session memory unavailable for %d request(s): %s", len(with_session), exc)
        return
    for env, messages in zip(with_session, turns, strict=True):
        assert env.retrieval is not None
        env.retrieval.session_turns = list(messages)  # tool calls and results included (workers/memory.py)
