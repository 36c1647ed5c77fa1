"""Retrieval stage on in-memory backends: batched top-k per tenant, labels, session turns, degraded backends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from schemas.envelope import Envelope, Message, ModelResult, PolicyDecision, Status
from schemas.errors import BackendError
from streams.followers.index import chunk_file, chunk_markdown, to_indexed
from workers import retrieval
from workers.embedding import HashingEmbedder, Vectors
from workers.memory import MemoryConversationMemory, append_turns
from workers.retrieval import RetrievalContext
from workers.vectors.chunks import IndexedChunk
from workers.vectors.index import MemoryVectorIndex

MakeEnv = Callable[..., Envelope]
CORPUS = Path(__file__).resolve().parents[2] / "infra" / "corpus"
EMBED = HashingEmbedder()


def _ctx(**fields: object) -> RetrievalContext:
    index = MemoryVectorIndex(EMBED.dim)
    for tenant_dir in CORPUS.iterdir():
        chunks = [to_indexed(c) for f in sorted(tenant_dir.glob("*.md")) for c in chunk_file(f, tenant=tenant_dir.name)]
        index.upsert(tenant_dir.name, chunks, EMBED.embed_sync([c.text for c in chunks]))
    return RetrievalContext(stage="retrieval", index=index, **fields)  # type: ignore[arg-type]


async def test_batch_gets_each_tenants_own_passages(make_envelope: MakeEnv) -> None:
    batch = [make_envelope("Can I get a refund on an annual plan?", tenant="acme"),
             make_envelope("How long does express shipping take?", tenant="globex"),
             make_envelope("How do I rotate an API key?", tenant="acme"),
             make_envelope("Anything at all", tenant="initech")]
    out = await retrieval.process(batch, _ctx())
    assert out[0].retrieval and out[0].retrieval.passages[0].doc_id.startswith("refund-policy.md#")
    assert out[1].retrieval and out[1].retrieval.passages[0].doc_id.startswith("shipping.md#")
    assert out[2].retrieval and out[2].retrieval.passages[0].doc_id.startswith("api-keys.md#")
    assert out[3].retrieval and out[3].retrieval.passages == [] and out[3].retrieval.skipped
    acme_docs = {"refund-policy.md", "onboarding-guide.md", "api-keys.md", "security-incidents.md"}
    for env in (out[0], out[2]):
        assert env.retrieval is not None
        assert {p.doc_id.split("#")[0] for p in env.retrieval.passages} <= acme_docs
        assert env.retrieval.confidence == env.retrieval.passages[0].score > 0


async def test_labelled_chunks_need_a_matching_label(make_envelope: MakeEnv) -> None:
    ctx = _ctx(labels_for=lambda env: frozenset({"hr"}) if env.request.task_id == "hr" else frozenset())
    secret = IndexedChunk("salaries.md#0", "salaries.md", "Salary bands for engineers", labels=frozenset({"hr"}))
    ctx.index.upsert("acme", [secret], EMBED.embed_sync([secret.text]))
    plain, hr = make_envelope("engineer salary bands"), make_envelope("engineer salary bands", task_id="hr")
    out = await retrieval.process([plain, hr], ctx)
    assert out[0].retrieval and "salaries.md#0" not in {p.doc_id for p in out[0].retrieval.passages}
    assert out[1].retrieval and out[1].retrieval.passages[0].doc_id == "salaries.md#0"


async def test_regions_from_an_existing_policy_decision(make_envelope: MakeEnv) -> None:
    ctx = _ctx()
    eu = IndexedChunk("eu.md#0", "eu.md", "Data retention rules for customer records", region="eu")
    ctx.index.upsert("acme", [eu], EMBED.embed_sync([eu.text]))
    env = make_envelope("data retention rules for customer records")
    env.policy = PolicyDecision(allowed_regions=["us"])
    (env,) = await retrieval.process([env], ctx)
    assert env.retrieval and "eu.md#0" not in {p.doc_id for p in env.retrieval.passages}


async def test_session_turns_roundtrip_and_tenant_scoping(make_envelope: MakeEnv) -> None:
    memory = MemoryConversationMemory()
    first = make_envelope("My order number is 1234", session_id="s1")
    first.answer, first.model = "Noted.", ModelResult(model="m")
    first.finish(Status.OK, stage="postprocess")
    assert await append_turns([first, make_envelope("no session")], memory) == 1
    ctx = _ctx(memory=memory)
    same, other_tenant = make_envelope("what was it?", session_id="s1"), \
        make_envelope("what was it?", session_id="s1", tenant="globex")
    out = await retrieval.process([same, other_tenant], ctx)
    assert out[0].retrieval and out[0].retrieval.session_turns == [
        Message(role="user", content="My order number is 1234"), Message(role="assistant", content="Noted.")]
    assert out[1].retrieval and out[1].retrieval.session_turns == []


class _BrokenEmbedder:
    name, dim = "broken", 256

    async def embed(self, texts: list[str]) -> Vectors:
        raise BackendError("down")


async def test_broken_embedder_skips_retrieval_not_the_request(make_envelope: MakeEnv) -> None:
    (env,) = await retrieval.process([make_envelope("refund?")], _ctx(embedder=_BrokenEmbedder()))
    assert env.retrieval and env.retrieval.skipped == "embedder unavailable" and env.retrieval.passages == []


def test_markdown_chunks_keep_their_heading_path() -> None:
    chunks = chunk_markdown("# Title\n\nintro\n\n## Part\nline one\nline two\n\nsecond para\n", max_chars=20)
    assert chunks == ["Title\nintro", "Title > Part\nline one line two", "Title > Part\nsecond para"]
