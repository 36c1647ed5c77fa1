"""The audit stage: one record per outcome, across redeliveries and crashes; no raw PII; dead letters."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from schemas.envelope import CacheResult, Envelope, ModelResult, PolicyDecision, Principal, Status, Usage
from schemas.response import DeadLetter
from workers.audit import stage as audit
from workers.audit.chain import HmacSigner
from workers.audit.claims import MemoryClaimStore
from workers.audit.record import record_from_deadletter
from workers.audit.sink import AuditLog, FileAuditSink, MemoryAuditSink
from workers.audit.stage import AuditContext, record_batch
from workers.audit.verify import verify_dir
from workers.context import FakeClock, MemoryPublisher
from workers.detectors.redaction import BasicRedactor

MakeEnvelope = Callable[..., Envelope]
PII = ("jane.doe@example.com", "4111 1111 1111 1111", "078-05-1120", "(212) 555-0123")
PII_PROMPT = f"I am {PII[0]}, card {PII[1]}, SSN {PII[2]}, phone {PII[3]}: why was I charged twice?"
SIGNER = HmacSigner(b"s")


def ctx_for(audit_log: AuditLog | None = None, claims: MemoryClaimStore | None = None,
            **options: object) -> AuditContext:
    return AuditContext(stage="audit", clock=FakeClock(), publisher=MemoryPublisher(), topic_prefix="tw",
                        audit_log=audit_log or AuditLog(MemoryAuditSink(), SIGNER),
                        claims=claims or MemoryClaimStore(), **options)  # type: ignore[arg-type]


def finished(make_envelope: MakeEnvelope, status: Status = Status.OK, prompt: str = "q", **fields: object) -> Envelope:
    env = make_envelope(prompt)
    for name, value in fields.items():
        setattr(env, name, value)
    env.route = ["audit"]
    env.finish(status, code=str(status), stage="postprocess")
    env.route = []
    return env


def published(ctx: AuditContext) -> list[dict[str, object]]:
    assert isinstance(ctx.publisher, MemoryPublisher)
    return [orjson.loads(value) for topic, _, value in ctx.publisher.records if topic == "tw.audit.log"]


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.DEAD_LETTERED])
async def test_each_outcome_gives_one_record(make_envelope: MakeEnvelope, status: Status) -> None:
    ctx = ctx_for()
    env = finished(make_envelope, status, principal=Principal(key_id="key-7", signature="sig-secret"),
                   policy=PolicyDecision(policy_version="v3", decisions=["allow"]),
                   cache=CacheResult(outcome="hit", kind="semantic", similarity=0.97, saved_micros=12),
                   model=ModelResult(model="small", region="eu", usage=Usage(input_tokens=3), cost_micros=44))
    assert await audit.process([env], ctx) == []
    (record,) = published(ctx)
    assert record["request_id"] == env.request_id and record["status"] == status.value
    assert record["principal_key_id"] == "key-7" and "sig-secret" not in orjson.dumps(record).decode()
    assert (record["policy_version"], record["cache_similarity"], record["model"], record["cost_micros"]) == \
        ("v3", 0.97, "small", 44)
    assert ctx.audit_log.size == 1


async def test_redelivered_and_duplicated_requests_are_recorded_once(make_envelope: MakeEnvelope) -> None:
    ctx = ctx_for()
    envs = [finished(make_envelope) for _ in range(5)]
    await audit.process([*envs, envs[0].model_copy(deep=True)], ctx)  # a duplicate in the batch
    await audit.process([e.model_copy(deep=True) for e in envs[:3]], ctx)  # redelivered batch
    assert ctx.audit_log.size == 5
    assert sorted(r["request_id"] for r in published(ctx)) == sorted(e.request_id for e in envs)  # type: ignore[type-var]


async def test_restart_with_the_same_chain_never_records_twice(make_envelope: MakeEnvelope, tmp_path: Path) -> None:
    claims = MemoryClaimStore()
    env = finished(make_envelope)
    sink = FileAuditSink.lease(tmp_path, fsync=False)
    ctx = ctx_for(AuditLog(sink, SIGNER), claims, owner=sink.owner)
    await audit.process([env], ctx)  # crash now: the claim is still pending (never confirmed)
    ctx.audit_log.close(now_ns=1)
    sink = FileAuditSink.lease(tmp_path, fsync=False)
    restarted = ctx_for(AuditLog(sink, SIGNER), claims, owner=sink.owner)
    await audit.process([env.model_copy(deep=True)], restarted)
    assert restarted.audit_log.size == 1
    assert [r["request_id"] for r in published(restarted)] == [env.request_id]  # mirrored again, not re-chained
    await audit.process([make_envelope("other").model_copy(update={"route": []})], restarted)  # confirms
    await audit.process([env.model_copy(deep=True)], restarted)
    assert len(published(restarted)) == 2 and restarted.audit_log.size == 2
    restarted.audit_log.close(now_ns=2)
    assert verify_dir(tmp_path, SIGNER).ok


async def test_claimed_before_a_crash_but_not_stored_is_stored(make_envelope: MakeEnvelope) -> None:
    claims = MemoryClaimStore()
    env = finished(make_envelope)
    await claims.claim([env.request_id], "chain-mem", now_ms=0)
    ctx = ctx_for(claims=claims)
    await audit.process([env], ctx)
    assert ctx.audit_log.size == 1


async def test_other_chains_claims(make_envelope: MakeEnvelope) -> None:
    claims = MemoryClaimStore(stale_claim_ms=1000)
    busy, dead, done = (finished(make_envelope) for _ in range(3))
    clock_ms = FakeClock().now_ns() // 1_000_000
    await claims.claim([busy.request_id], "other", now_ms=clock_ms)
    await claims.claim([dead.request_id], "other", now_ms=clock_ms - 5000)
    await claims.claim([done.request_id], "other", now_ms=clock_ms)
    await claims.confirm([done.request_id], "other")
    ctx = ctx_for(claims=claims)
    await audit.process([busy, dead, done], ctx)
    assert [r["request_id"] for r in published(ctx)] == [dead.request_id]  # a stale claim is taken over


async def test_no_raw_pii_in_records(make_envelope: MakeEnvelope) -> None:
    for mode in ("hashes", "redacted"):
        ctx = ctx_for(content_mode=mode)
        env = finished(make_envelope, prompt=PII_PROMPT, answer=f"Dear {PII[0]}, refunded to {PII[1]}")
        env.outcome.message = f"denied: prompt mentions {PII[2]}"  # type: ignore[union-attr]
        await audit.process([env], ctx)
        raw = b"".join(ctx.audit_log.sink.lines)  # type: ignore[attr-defined]
        for value in PII:
            assert value.encode() not in raw, (mode, value)
        (record,) = published(ctx)
        assert record["prompt_sha256"] and record["answer_sha256"]
        assert (record["prompt_redacted"] is None) == (mode == "hashes")
        if mode == "redacted":
            assert "[EMAIL]" in str(record["prompt_redacted"]) and "charged twice" in str(record["prompt_redacted"])


async def test_dead_letters_become_records_once() -> None:
    ctx = ctx_for()
    letters = [DeadLetter(reason="invalid_json", error="bad", stage="policy", worker_id="w", source_topic="tw.policy",
                          source_partition=1, source_offset=i, original_b64="", original_size=0,
                          dead_lettered_at_ns=1) for i in range(3)]
    named = letters[0].model_copy(update={"request_id": "r-1", "tenant": "acme", "reason": "misrouted"})
    records = [record_from_deadletter(x, redactor=BasicRedactor(), auditor="w", now_ns=5)
               for x in (*letters, named, letters[1])]
    pending: list[str] = []
    result = await record_batch(records, ctx, ctx.publisher, pending)
    assert len(result.appended) == 4 and len(result.duplicates) == 1
    keys = {r["dedup_key"] for r in published(ctx)}
    assert keys == {"deadletter:tw.policy:1:0", "deadletter:tw.policy:1:1", "deadletter:tw.policy:1:2", "r-1"}
    assert all(r["status"] == "dead_lettered" for r in published(ctx))
