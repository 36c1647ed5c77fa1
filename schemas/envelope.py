"""The request envelope: the one event that travels every stage topic.

Each stage fills in its own typed section and appends one :class:`Hop`. Times are epoch nanoseconds (``*_ns``) or
milliseconds (``*_ms``) as their names say; money is integer micro-dollars (``*_micros``), never a float.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION: Literal[1] = 1
# Every stage, in route order. ``tools`` is visited only when the model answers with tool calls: the model stage then
# routes ``tools → model → … → postprocess → audit`` (workers/model.py), so it is not on the default route.
STAGES: tuple[str, ...] = ("retrieval", "policy", "cache", "model", "tools", "postprocess", "audit")
DEFAULT_ROUTE: tuple[str, ...] = ("retrieval", "policy", "cache", "model", "postprocess", "audit")
_STAGE_SET = frozenset(STAGES)

StageName = Literal["retrieval", "policy", "cache", "model", "tools", "postprocess", "audit"]


class _Model(BaseModel):
    # Unknown fields are refused so a typo in a producer is a clear error, not silently ignored data.
    model_config = ConfigDict(extra="forbid", frozen=False, validate_assignment=False)


class Tier(StrEnum):
    """SLO tier: decides the latency budget and the lane (batch travels on separate lane topics)."""

    INTERACTIVE = "interactive"
    STANDARD = "standard"
    BATCH = "batch"


class Status(StrEnum):
    """Terminal outcome of a request."""

    OK = "ok"
    CACHE_HIT = "cache_hit"
    DENIED = "denied"
    FAILED = "failed"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    DEAD_LETTERED = "dead_lettered"


class ToolCall(_Model):
    """One call the model asked for: ``id`` is unique within the request (the exactly-once key of its effect)."""

    id: str = Field(min_length=1, max_length=128)
    name: str = Field(min_length=1, max_length=128)
    arguments: dict[str, Any] = Field(default_factory=dict)


def _unset(value: object) -> bool:
    """Optional fields added to an event after v1 are left out of its JSON while unset, so an event that does not
    use them is written byte for byte as before (and its request digest is unchanged)."""
    return value is None or value == []


def _auto(value: object) -> bool:
    return value == "auto"


class Message(_Model):
    role: Literal["system", "user", "assistant", "tool"]
    content: str
    # OpenAI's tool-call turns (client-executed tools): an assistant message that asked for tools, and the tool
    # message that answers one of its calls by id.
    tool_calls: list[ToolCall] | None = Field(default=None, exclude_if=_unset)
    tool_call_id: str | None = Field(default=None, max_length=128, exclude_if=_unset)


class FunctionTool(_Model):
    """A tool the caller defines in its request (OpenAI's ``tools[].function``): offered to the model, and — unless
    it is one of the tenant's registered tools in server mode — executed by the caller (client-executed mode)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str = Field(default="", max_length=4_000)
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


ToolsMode = Literal["auto", "server", "client"]


class GenerationParams(_Model):
    max_tokens: int = Field(default=256, ge=1, le=32_768)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    response_format: dict[str, Any] | None = None


class CacheControl(_Model):
    read: bool = True
    write: bool = True
    ttl_s: int | None = Field(default=None, ge=1)
    no_store: bool = False


class Request(_Model):
    messages: list[Message] = Field(min_length=1)
    params: GenerationParams = Field(default_factory=GenerationParams)
    model: str | None = None  # a catalog model name, or None / "auto" to let the router choose
    quality_tier: str | None = None
    session_id: str | None = Field(default=None, max_length=200)
    task_id: str | None = Field(default=None, max_length=200)
    cache: CacheControl = Field(default_factory=CacheControl)
    reply_to: str | None = Field(default=None, max_length=249)
    # Tool use (workers/tools/modes.py): the caller's tool definitions, OpenAI's tool_choice ("auto", "none",
    # "required" or a tool's name) and who runs the calls — "server": tollway runs registered tools and answers;
    # "client": the response carries the calls and the caller posts their results back; "auto": server when every
    # named tool is a registered tool of the tenant, client otherwise.
    tools: list[FunctionTool] = Field(default_factory=list, max_length=128, exclude_if=_unset)
    tool_choice: str = Field(default="auto", max_length=64, exclude_if=_auto)
    tools_mode: ToolsMode = Field(default="auto", exclude_if=_auto)

    @property
    def prompt(self) -> str:
        """The last user message: what retrieval, cache and routing key on."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return self.messages[-1].content


class Principal(_Model):
    """Who sent the request: a key id (never the key) and the ingress's signature over the request's identity."""

    key_id: str
    signature: str = ""


class Hop(_Model):
    stage: str
    worker_id: str
    produced_at_ns: int  # Kafka record timestamp of the record this stage consumed
    received_at_ns: int
    started_at_ns: int
    finished_at_ns: int = 0
    batch_size: int = 1
    status: str = "ok"
    remaining_budget_ms: float = 0.0
    budget_violation: bool = False

    @classmethod
    def arrived(cls, stage: str, worker_id: str, produced_at_ns: int, received_at_ns: int) -> Hop:
        """The hop a runner stamps when a record arrives (started = received, every other field its default): the
        instance ``Hop(stage=…, worker_id=…, produced_at_ns=…, received_at_ns=…, started_at_ns=…)`` builds — same
        fields, same fields-set — written directly, without validating values that are already a str and ints (a
        record's timestamp and the clock's). About half of what validating costs, at every hop of every request
        (tests/schemas/test_envelope.py compares the two)."""
        hop = _new(cls)
        _set(hop, "__dict__", {"stage": stage, "worker_id": worker_id, "produced_at_ns": produced_at_ns,
                               "received_at_ns": received_at_ns, "started_at_ns": received_at_ns,
                               "finished_at_ns": 0, "batch_size": 1, "status": "ok", "remaining_budget_ms": 0.0,
                               "budget_violation": False})
        _set(hop, "__pydantic_fields_set__", set(_ARRIVED))
        _set(hop, "__pydantic_extra__", None)
        _set(hop, "__pydantic_private__", None)
        return hop

    @property
    def queue_ms(self) -> float:
        """Time between the upstream produce and the start of work here: broker + consumer + batch wait."""
        return max(0, self.started_at_ns - self.produced_at_ns) / 1e6

    @property
    def service_ms(self) -> float:
        return max(0, self.finished_at_ns - self.started_at_ns) / 1e6

    def rounded_ms(self) -> tuple[float, float]:
        """``(queue_ms, service_ms)`` rounded to the microsecond, as responses and audit records carry them: the two
        properties' arithmetic in one call (every hop of every response and audit record runs it)."""
        started = self.started_at_ns
        queued, served = started - self.produced_at_ns, self.finished_at_ns - started
        queued, served = (queued if queued > 0 else 0), (served if served > 0 else 0)
        # round(ns / 1e6, 3) is the whole microseconds of ns rounded half to even — except where ns / 1e6 is a float
        # whose binary value sits just off a tie (ns ending in 500) or ns is too large for that float to be within a
        # thousandth of its true value (2**53): there the float is rounded as before. Integer arithmetic is about half
        # of round()'s cost (decimal conversion both ways); the same floats (tests/schemas/test_envelope.py).
        q_us, q_rest = divmod(queued, 1000)
        s_us, s_rest = divmod(served, 1000)
        if q_rest == 500 or s_rest == 500 or queued >= _EXACT_NS or served >= _EXACT_NS:
            return round(queued / 1e6, 3), round(served / 1e6, 3)
        return (q_us + (q_rest > 500)) / 1000, (s_us + (s_rest > 500)) / 1000


def ms_rounded(ns: int) -> float:
    """``round(ns / 1e6, 3)`` for an integer ``ns`` (negative too: round() is symmetric), by Hop.rounded_ms's
    integer rounding: the same float, -0.0 included (tests/schemas/test_envelope.py)."""
    magnitude = -ns if ns < 0 else ns
    whole_us, rest = divmod(magnitude, 1000)
    if rest == 500 or magnitude >= _EXACT_NS:
        return round(ns / 1e6, 3)
    value = (whole_us + (rest > 500)) / 1000
    return -value if ns < 0 else value


_new = object.__new__
_set = object.__setattr__
_EXACT_NS = 1 << 53  # below this, ns / 1e6 is within a thousandth of a microsecond of its exact value
_ARRIVED = frozenset({"stage", "worker_id", "produced_at_ns", "received_at_ns", "started_at_ns"})
_FINISHED = frozenset({"status", "code", "message", "stage", "retry_after_s"})  # an Outcome's fields set by finish
_FINISHED_ENVELOPE = frozenset({"outcome", "route"})


class Passage(_Model):
    doc_id: str
    score: float
    text: str


class RetrievalResult(_Model):
    passages: list[Passage] = Field(default_factory=list)
    confidence: float = 0.0
    session_turns: list[Message] = Field(default_factory=list)
    skipped: str | None = None


class PolicyDecision(_Model):
    policy_version: str = ""
    principal_key_id: str | None = None
    allowed_models: list[str] = Field(default_factory=list)
    allowed_regions: list[str] = Field(default_factory=list)
    quality_tier: str | None = None
    cache_allowed: bool = True
    semantic_threshold: float | None = None
    pii_found: dict[str, int] = Field(default_factory=dict)
    injection_score: float = 0.0
    injection_rules: list[str] = Field(default_factory=list)
    decisions: list[str] = Field(default_factory=list)
    reserved_micros: int = 0
    reservation_id: str | None = None
    # Sealed by the policy stage (workers/decisions.py): the route it decided, a digest of the governed request, and
    # an HMAC over the whole decision; the stages after policy verify it instead of trusting the envelope.
    route: list[str] = Field(default_factory=list)
    request_digest: str = ""
    key_id: str | None = None
    signature: str | None = None


class CacheResult(_Model):
    outcome: Literal["hit", "miss", "bypass", "error"] = "miss"
    kind: Literal["exact", "semantic"] | None = None
    similarity: float | None = None
    saved_micros: int = 0
    key: str | None = None
    rejected_near_miss: bool = False
    # Why the best semantic candidate was refused: a near-miss guard reason ("negation", "roles", …) or "verifier".
    refused_reason: str | None = None
    verifier_score: float | None = None  # the pair verifier's probability for the served or best refused candidate


class Usage(_Model):
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
        )


class RouteRecord(_Model):
    """What the learning router (``workers/routing/online.py``) needs to learn from the verdict on this request: the
    features it was routed on, its task kind, the auto tier of the answer, and whether it was a probe or a cascade
    whose cheaper answer failed verification (``cascade_failed_tier``)."""

    kind: str
    features: list[float]
    tier: str
    probe: bool = False
    cascade_failed_tier: str | None = None
    prior_medium: float = 0.0  # the calibrated router's logits when it was in force (the learner's offset)
    prior_large: float = 0.0


class ModelResult(_Model):
    model: str = ""
    backend: str = ""
    region: str = ""
    quality_tier: str | None = None
    routing: list[str] = Field(default_factory=list)  # the router's reasons, in order
    attempts: int = 0
    usage: Usage = Field(default_factory=Usage)
    cost_micros: int = 0  # every call of the request, a cascade's cheaper call included
    latency_ms: float = 0.0
    # An agent loop's model turns, one cost each (their sum is cost_micros): the cost per step of a task.
    step_cost_micros: list[int] = Field(default_factory=list, exclude_if=_unset)
    # set when the auto tier decided (the learning router's input)
    learn: RouteRecord | None = Field(default=None, exclude_if=_unset)
    # of cost_micros, what the cascade's escalated cheaper call cost
    cascade_cost_micros: int = Field(default=0, exclude_if=lambda v: v == 0)
    cascade_model: str | None = Field(default=None, exclude_if=_unset)  # … and the model that made it


ToolCallStatus = Literal["ok", "denied", "error"]


class ToolCallRecord(_Model):
    """What became of one tool call: governed, executed (or not), costed. ``content`` is what the model sees next:
    the result's JSON, or a structured error ``{"error": code, "message": …}`` — a denied call never disappears."""

    call_id: str
    name: str
    step: int
    status: ToolCallStatus
    code: str = ""  # "" when ok; a denial or failure code otherwise (tool_denied, invalid_arguments, tool_timeout, …)
    content: str = ""
    arguments_sha256: str = ""  # of the arguments as executed (after redaction)
    result_sha256: str | None = None
    decisions: list[str] = Field(default_factory=list)
    side_effects: bool = False
    replayed: bool = False  # the effect had already happened (a redelivery): its stored result was reused
    region: str = ""
    cost_micros: int = 0
    latency_ms: float = 0.0


class ToolsResult(_Model):
    """The agent loop's state: the calls the model asked for and not yet answered (``pending``), every call's record,
    the model steps taken, and the tool calls' cost (the model's own cost stays on ``Envelope.model``)."""

    offered: list[str] = Field(default_factory=list)  # the tools the model was offered (the tenant's visible tools)
    # "client": the offered tools are the caller's (Request.tools); a turn that asks for them ends the request with
    # the calls in ``pending`` for the caller to run, instead of visiting the tools stage.
    mode: Literal["server", "client"] = Field(default="server", exclude_if=lambda v: v == "server")
    pending: list[ToolCall] = Field(default_factory=list)
    calls: list[ToolCallRecord] = Field(default_factory=list)
    steps: int = 0  # model turns that asked for tools
    max_steps: int = 4
    cost_micros: int = 0
    # The model stage's seal over the calls it asked for (workers/decisions.py): the tools stage runs only those.
    calls_key_id: str | None = None
    calls_signature: str | None = None


class Evaluation(_Model):
    """The online evaluators' verdicts on one sampled answer (``workers/evaluators.py``); None: not applicable."""

    grounded_share: float | None = None  # share of the answer's sentences supported by the retrieved passages
    grounded: bool | None = None  # grounded_share reached the configured minimum
    structured_valid: bool | None = None  # only when the request asked for a response_format
    refusal: bool | None = None  # the answer declines to help


class PostprocessResult(_Model):
    actions: list[str] = Field(default_factory=list)
    structured_output_valid: bool | None = None
    evaluation: Evaluation | None = None  # set when the request was sampled for evaluation


class Outcome(_Model):
    status: Status
    code: str = ""  # machine-readable: a denial code, "model_error", "deadline_exceeded", ...
    message: str = ""
    retry_after_s: float | None = None
    stage: str = ""
    # Signed by the stage that ended the request, over what the ledger and the audit count (workers/decisions.py).
    key_id: str | None = None
    signature: str | None = None


class TraceContext(_Model):
    """W3C trace context (https://www.w3.org/TR/trace-context/) of the span that last handled the request: the
    producer's, then each stage's (``streams/runtime/tracing.py``). It travels in the envelope rather than in record
    headers so every path an envelope takes (stage lanes, replays, dead letters, the in-memory harness) carries it."""

    traceparent: str = Field(pattern=r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
    tracestate: str = Field(default="", max_length=512)


class Envelope(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["request"] = "request"
    request_id: str = Field(min_length=1, max_length=128)
    tenant: str = Field(min_length=1, max_length=128)
    principal: Principal | None = None
    tier: Tier = Tier.STANDARD
    created_at_ns: int
    deadline_at_ns: int
    request: Request
    route: list[str] = Field(default_factory=lambda: list(DEFAULT_ROUTE))
    hops: list[Hop] = Field(default_factory=list)
    retrieval: RetrievalResult | None = None
    policy: PolicyDecision | None = None
    cache: CacheResult | None = None
    model: ModelResult | None = None
    postprocess: PostprocessResult | None = None
    tools: ToolsResult | None = None
    answer: str | None = None
    outcome: Outcome | None = None
    responded: bool = False  # set once the response for the terminal outcome has been published
    trace: TraceContext | None = None  # set by producers and stages only while tracing is on (or passed through)

    @field_validator("route")
    @classmethod
    def _known_stages(cls, route: list[str]) -> list[str]:
        if _STAGE_SET.issuperset(route):  # the common case, at every hop: one C-level check
            return route
        unknown = [stage for stage in route if stage not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) in route: {unknown}")
        return route

    @property
    def terminal(self) -> bool:
        return self.outcome is not None

    def finish(self, status: Status, *, code: str = "", message: str = "", stage: str = "",
               retry_after_s: float | None = None) -> None:
        """Give the request its terminal outcome; what is left of the route collapses to the audit stage.

        The outcome is the instance ``Outcome(status=…, code=…, message=…, stage=…, retry_after_s=…)`` builds — same
        fields in the same order, same fields-set — written directly when every value is already what validation
        would give (a ``Status``, plain strs, no or a float ``retry_after_s``); anything else (an int retry, which
        validation writes as a float, a status given as its value) is validated as before. Both assignments are
        written as pydantic's own (validate_assignment is off). Once per request; tests/schemas/test_envelope.py
        compares the two."""
        if (type(status) is Status and type(code) is str and type(message) is str and type(stage) is str
                and (retry_after_s is None or type(retry_after_s) is float)):
            outcome = _new(Outcome)
            _set(outcome, "__dict__", {"status": status, "code": code, "message": message,
                                       "retry_after_s": retry_after_s, "stage": stage, "key_id": None,
                                       "signature": None})
            _set(outcome, "__pydantic_fields_set__", set(_FINISHED))
            _set(outcome, "__pydantic_extra__", None)
            _set(outcome, "__pydantic_private__", None)
        else:
            outcome = Outcome(status=status, code=code, message=message, stage=stage, retry_after_s=retry_after_s)
        fields = self.__dict__
        fields["outcome"] = outcome
        fields["route"] = ["audit"] if stage != "audit" else []
        self.__pydantic_fields_set__.update(_FINISHED_ENVELOPE)

    def remaining_budget_ms(self, now_ns: int) -> float:
        return (self.deadline_at_ns - now_ns) / 1e6


_OMITTED_WHEN: dict[type, tuple[tuple[str, Callable[[Any], bool]], ...]] = {}


def _omitted_when(cls: type[BaseModel]) -> tuple[tuple[str, Callable[[Any], bool]], ...]:
    rules = _OMITTED_WHEN.get(cls)
    if rules is None:
        rules = tuple((name, field.exclude_if) for name, field in cls.model_fields.items()
                      if field.exclude_if is not None)
        _OMITTED_WHEN[cls] = rules
    return rules


def json_fields(value: object) -> dict[str, Any]:
    """orjson's ``default`` hook for our models: a model is its fields, minus those its ``exclude_if`` leaves out —
    the document ``model_dump(mode="json")`` gives, without building it (our models have no extra fields, aliases or
    custom serialisers; tests/streams/runtime/test_codec_fast_path.py and tests/workers/test_decisions.py check the
    bytes against pydantic-core's)."""
    rules = _OMITTED_WHEN.get(type(value))  # a model written before: its rules, without a call or a type check
    if rules is None:
        if not isinstance(value, BaseModel):
            raise TypeError(f"cannot write {type(value).__name__} as JSON")
        rules = _omitted_when(type(value))
    if not rules:
        return value.__dict__
    fields = dict(value.__dict__)
    for name, omitted in rules:
        if omitted(fields[name]):
            del fields[name]
    return fields


def document_of(cls: type[BaseModel], fields: dict[str, Any]) -> dict[str, Any]:
    """What ``json_fields`` gives for a ``cls`` holding ``fields`` (every field, in the model's order): the fields
    its ``exclude_if`` leaves out are removed, in place."""
    for name, omitted in _omitted_when(cls):
        if omitted(fields[name]):
            del fields[name]
    return fields
