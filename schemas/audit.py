"""The audit record: one per request outcome, hash-chained on disk and mirrored on ``<prefix>.audit.log``.

What a record never holds: a raw key (only ``principal_key_id``), a raw prompt or answer (only their sha256 — the
default — or their redacted form when ``TOLLWAY_AUDIT_CONTENT=redacted``), or the raw bytes of a dead letter.

On disk each line of a chain segment is ``{"i":<index>,"chain":"<hex>","record":<record bytes>}``: the record's bytes
are hashed exactly as stored (see ``workers/audit/chain.py``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import SCHEMA_VERSION, Status, Usage

ContentMode = Literal["hashes", "redacted"]


class AuditHop(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stage: str
    worker_id: str
    produced_at_ns: int
    started_at_ns: int
    finished_at_ns: int
    queue_ms: float
    service_ms: float
    status: str = "ok"
    budget_violation: bool = False


class AuditToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    call_id: str
    tool: str
    step: int
    status: str
    code: str = ""
    decisions: list[str] = Field(default_factory=list)
    arguments_sha256: str = ""
    result_sha256: str | None = None
    side_effects: bool = False
    replayed: bool = False
    region: str = ""
    cost_micros: int = 0
    latency_ms: float = 0.0


class AuditRecord(BaseModel):
    """Everything a compliance reader needs to reconstruct one request's outcome, and nothing it must not see."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["audit"] = "audit"
    # identity; request_id is None only for a dead letter whose bytes could not be decoded at all
    request_id: str | None
    dedup_key: str  # request_id, or "deadletter:<topic>:<partition>:<offset>" when there is none
    tenant: str | None
    principal_key_id: str | None = None
    source: Literal["pipeline", "deadletter"] = "pipeline"
    # outcome
    status: Status
    code: str = ""
    message: str = ""  # passed through the redactor: stage messages may quote the prompt
    outcome_stage: str = ""
    tier: str | None = None
    # time
    created_at_ns: int | None = None
    deadline_at_ns: int | None = None
    audited_at_ns: int
    hops: list[AuditHop] = Field(default_factory=list)
    # governance
    policy_version: str | None = None
    policy_decisions: list[str] = Field(default_factory=list)
    pii_found: dict[str, int] = Field(default_factory=dict)
    injection_score: float | None = None
    injection_rules: list[str] = Field(default_factory=list)
    retrieval_doc_ids: list[str] = Field(default_factory=list)
    # cache
    cache_outcome: str | None = None
    cache_kind: str | None = None
    cache_similarity: float | None = None
    saved_micros: int = 0
    # model and money
    model: str | None = None
    backend: str | None = None
    region: str | None = None
    routing: list[str] = Field(default_factory=list)
    attempts: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost_micros: int = 0  # the model's turns plus the tool calls
    reserved_micros: int = 0
    # tool calls of an agent loop: one entry per call, run, refused or failed (arguments and result as digests)
    tool_cost_micros: int = 0
    tool_calls: list[AuditToolCall] = Field(default_factory=list)
    # output guardrails
    postprocess_actions: list[str] = Field(default_factory=list)
    structured_output_valid: bool | None = None
    # content: hashes always; redacted text only when the content mode asks for it
    content_mode: ContentMode = "hashes"
    prompt_sha256: str | None = None
    answer_sha256: str | None = None
    prompt_redacted: str | None = None
    answer_redacted: str | None = None
    # dead letters: where the unprocessable record came from (never its bytes)
    deadletter_reason: str | None = None
    deadletter_stage: str | None = None
    deadletter_source: str | None = None  # "<topic>[<partition>]@<offset>"
    # who wrote it
    auditor_worker_id: str = ""


class Checkpoint(BaseModel):
    """A signed statement "chain C had these ``tree_size`` records, with this Merkle root and this chain head"."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["checkpoint"] = "checkpoint"
    chain_id: str
    tree_size: int
    root: str  # hex RFC 6962 Merkle tree hash over the first tree_size leaves
    chain_head: str  # hex chain hash after the record tree_size - 1
    signed_at_ns: int
    alg: Literal["hmac-sha256", "ed25519"]
    key_id: str
    signature: str = ""  # hex; over the canonical JSON of every other field
