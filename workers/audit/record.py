"""Building audit records from envelopes and dead letters: pure functions, no raw PII in, none out.

Prompt and answer are kept as SHA-256 hashes (the default), or in redacted form when the content mode says so; stage
messages pass through the redactor because a stage may quote the request. A principal appears only as its key id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.audit import AuditRecord, ContentMode
from schemas.envelope import SCHEMA_VERSION, Envelope, Status, Usage, json_fields
from schemas.response import DeadLetter
from workers.detectors.redaction import Redactor


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def encode_record(record: AuditRecord) -> bytes:
    """The bytes that are chained, stored and mirrored to the audit topic (field order is the model's).

    Written straight from the model (orjson asks ``json_fields`` for each nested model's fields): the same bytes as
    ``orjson.dumps(record.model_dump(mode="json"))`` — the audit models exclude nothing and serialise nothing their
    own way — without building the intermediate dict (tests/workers/audit/test_record.py compares the two)."""
    try:
        return orjson.dumps(record, default=json_fields)
    except orjson.JSONEncodeError:  # what orjson cannot write (an integer beyond 64 bits): pydantic's document
        return orjson.dumps(record.model_dump(mode="json"))


def deadletter_key(letter: DeadLetter) -> str:
    """Dedup key of a dead letter: its request when known, else where its bytes came from (stable on redelivery)."""
    if letter.request_id:
        return letter.request_id
    return f"deadletter:{letter.source_topic}:{letter.source_partition}:{letter.source_offset}"


@dataclass(frozen=True, slots=True)
class EncodedRecord:
    """An audit record as it is chained, stored and mirrored: its dedup key, its Kafka key and its bytes."""

    dedup_key: str
    kafka_key: bytes
    data: bytes


def encoded(record: AuditRecord) -> EncodedRecord:
    return EncodedRecord(record.dedup_key, (record.request_id or record.dedup_key).encode(), encode_record(record))


def record_fields(env: Envelope, *, redactor: Redactor, content_mode: ContentMode, auditor: str,
                  now_ns: int) -> dict[str, Any]:
    """The audit record of ``env`` as plain data: every field of :class:`AuditRecord`, in its order, each value of the
    type the record holds (what validation would give), nested records as dicts in their models' field order — so
    validating it gives the record, and writing it gives the record's bytes (tests/workers/audit/test_record.py)."""
    outcome = env.outcome
    policy, cache, model, post, tools = env.policy, env.cache, env.model, env.postprocess, env.tools
    prompt = env.request.prompt
    redacted = content_mode == "redacted"
    hops = []
    for h in env.hops:
        queue_ms, service_ms = h.rounded_ms()
        hops.append({"stage": h.stage, "worker_id": h.worker_id, "produced_at_ns": h.produced_at_ns,
                     "started_at_ns": h.started_at_ns, "finished_at_ns": h.finished_at_ns, "queue_ms": queue_ms,
                     "service_ms": service_ms, "status": h.status, "budget_violation": h.budget_violation})
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "audit",
        "request_id": env.request_id,
        "dedup_key": env.request_id,
        "tenant": env.tenant,
        "principal_key_id": env.principal.key_id if env.principal else (policy.principal_key_id if policy else None),
        "source": "pipeline",
        "status": outcome.status if outcome else Status.FAILED,
        "code": outcome.code if outcome else "no_outcome",
        "message": (redactor.redact(outcome.message)[0] if outcome.message else "") if outcome
        else "reached audit without a terminal outcome",
        "outcome_stage": outcome.stage if outcome else "",
        "tier": str(env.tier),
        "created_at_ns": env.created_at_ns,
        "deadline_at_ns": env.deadline_at_ns,
        "audited_at_ns": now_ns,
        "hops": hops,
        "policy_version": policy.policy_version if policy else None,
        "policy_decisions": list(policy.decisions) if policy else [],
        "pii_found": dict(policy.pii_found) if policy else {},
        "injection_score": policy.injection_score if policy else None,
        "injection_rules": list(policy.injection_rules) if policy else [],
        "retrieval_doc_ids": [p.doc_id for p in env.retrieval.passages] if env.retrieval else [],
        "cache_outcome": cache.outcome if cache else None,
        "cache_kind": cache.kind if cache else None,
        "cache_similarity": cache.similarity if cache else None,
        "saved_micros": cache.saved_micros if cache else 0,
        "model": model.model or None if model else None,
        "backend": model.backend or None if model else None,
        "region": model.region or None if model else None,
        "routing": list(model.routing) if model else [],
        "attempts": model.attempts if model else 0,
        "usage": model.usage if model else Usage(),
        "cost_micros": (model.cost_micros if model else 0) + (tools.cost_micros if tools else 0),
        "reserved_micros": policy.reserved_micros if policy else 0,
        "tool_cost_micros": tools.cost_micros if tools else 0,
        "tool_calls": [{"call_id": c.call_id, "tool": c.name, "step": c.step, "status": c.status, "code": c.code,
                        "decisions": list(c.decisions), "arguments_sha256": c.arguments_sha256,
                        "result_sha256": c.result_sha256, "side_effects": c.side_effects, "replayed": c.replayed,
                        "region": c.region, "cost_micros": c.cost_micros, "latency_ms": c.latency_ms}
                       for c in (tools.calls if tools else [])],
        "postprocess_actions": list(post.actions) if post else [],
        "structured_output_valid": post.structured_output_valid if post else None,
        "content_mode": content_mode,
        "prompt_sha256": sha256_hex(prompt),
        "answer_sha256": sha256_hex(env.answer) if env.answer is not None else None,
        "prompt_redacted": redactor.redact(prompt)[0] if redacted else None,
        "answer_redacted": redactor.redact(env.answer)[0] if redacted and env.answer is not None else None,
        "deadletter_reason": None,
        "deadletter_stage": None,
        "deadletter_source": None,
        "auditor_worker_id": auditor,
    }


def record_from_envelope(env: Envelope, *, redactor: Redactor, content_mode: ContentMode, auditor: str,
                         now_ns: int) -> AuditRecord:
    return AuditRecord.model_validate(record_fields(env, redactor=redactor, content_mode=content_mode,
                                                    auditor=auditor, now_ns=now_ns))


def encoded_from_envelope(env: Envelope, *, redactor: Redactor, content_mode: ContentMode, auditor: str,
                          now_ns: int) -> EncodedRecord:
    """The audit stage's path: the record's bytes written from its fields, without building the model (validating
    ~50 fields and every hop cost more than the rest of the record); the same bytes as
    ``encode_record(record_from_envelope(...))``."""
    fields = record_fields(env, redactor=redactor, content_mode=content_mode, auditor=auditor, now_ns=now_ns)
    try:
        data = orjson.dumps(fields, default=json_fields)
    except orjson.JSONEncodeError:
        data = encode_record(AuditRecord.model_validate(fields))
    return EncodedRecord(env.request_id, env.request_id.encode(), data)


def record_from_deadletter(letter: DeadLetter, *, redactor: Redactor, auditor: str, now_ns: int) -> AuditRecord:
    return AuditRecord(
        request_id=letter.request_id,
        dedup_key=deadletter_key(letter),
        tenant=letter.tenant,
        source="deadletter",
        status=Status.DEAD_LETTERED,
        code=letter.reason,
        message=redactor.redact(letter.error)[0][:500],
        outcome_stage=letter.stage,
        audited_at_ns=now_ns,
        deadletter_reason=letter.reason,
        deadletter_stage=letter.stage,
        deadletter_source=f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}",
        auditor_worker_id=auditor,
    )
