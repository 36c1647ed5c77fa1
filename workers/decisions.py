"""Zero trust between stages: signed policy decisions and signed outcomes.

A stage does not trust what an envelope says about earlier stages. Two signatures, HMAC-SHA256 with a key id so keys
rotate without downtime (sign with the first key, verify with any listed):

* **the decision** — the policy stage's verdict (every field of ``PolicyDecision``: allowed models and regions, cache
  permission, reservation, ...), bound to the request id, tenant, tier, principal, the route policy decided and a
  digest of the governed (redacted) request. The cache, model, post-process and audit stages refuse an envelope
  whose decision is missing, forged, replayed from another request, or whose route or request changed since.
* **the tool calls** — the model stage seals the calls it asked for (with the step, the offered tools, the request
  id); the tools stage runs nothing else (an injected or altered call is refused like a forged decision).
* **the outcome** — signed by the stage that ended the request, over what the ledger and the audit count (status,
  code, model, tokens, cost, savings, task). An outcome that does not verify is never answered with data, never
  counted: it is turned into an audited denial.

Keys come from ``TOLLWAY_DECISION_KEYS`` (``kid:secret[,kid:secret…]``); the stages and the ledger share them, the
producers never see them.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel

from schemas.envelope import Envelope, Request, Usage, document_of, json_fields
from schemas.errors import ConfigError

DEV_DECISION_KEYS = "dev:tollway-dev-decision-key-change-me"


_BLOCK = 64  # SHA-256's block size

# A request's seal is computed once and checked again at every governed stage after it — in a co-located chain, in
# the same process and usually the same cycle: the decision's MAC at the policy stage, then at cache, model and
# post-process; the request digest likewise; the outcome's MAC where it ends and at the audit. Each check still builds
# its message from the envelope as it is now and compares; only the hash of a message already hashed is looked up by
# the message's bytes (a dict hashes them at ~1/10 of SHA-256's cost). A pure function memoised by value, never by an
# object's identity. Bounded: the oldest entry goes first; long messages are not kept.
_MEMO_ENTRIES = 4096
_MEMO_MAX_BYTES = 4096


def _remember(memo: dict[bytes, str], message: bytes, digest: str) -> None:
    if len(message) <= _MEMO_MAX_BYTES:
        if len(memo) >= _MEMO_ENTRIES:
            del memo[next(iter(memo))]
        memo[message] = digest


_MACS: dict[bytes, dict[bytes, str]] = {}  # MACs by message, per key (see _remember)
_DIGESTS: dict[bytes, str] = {}  # request digests by payload (see _remember)


class _Hmac:
    """HMAC-SHA256 under one key with the key's two padded blocks hashed once (RFC 2104: H(K⊕opad ‖ H(K⊕ipad ‖ m))):
    a MAC is two copies and updates of C hash objects, about half of what ``hmac.new`` costs per message (it sets
    up both blocks again), and a message MACed before is looked up (``_remember``). The same MAC as
    ``hmac.new(key, message, hashlib.sha256)`` (tests/workers/test_decisions.py)."""

    __slots__ = ("_inner", "_known", "_outer")

    def __init__(self, key: bytes) -> None:
        block = (hashlib.sha256(key).digest() if len(key) > _BLOCK else key).ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        # Shared by every instance under this key: each stage's runner parses the keys itself.
        self._known = _MACS.setdefault(key, {})

    def hexdigest(self, message: bytes) -> str:
        known = self._known.get(message)
        if known is not None:
            return known
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        digest = outer.hexdigest()
        _remember(self._known, message, digest)
        return digest


@dataclass(frozen=True)
class DecisionKeys:
    keys: dict[str, bytes]
    active: str
    _macs: dict[str, _Hmac] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_macs", {kid: _Hmac(secret) for kid, secret in self.keys.items()})

    @classmethod
    def parse(cls, text: str) -> DecisionKeys:
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            kid, sep, secret = part.partition(":")
            if not sep or not kid or len(secret) < 16:
                raise ConfigError("TOLLWAY_DECISION_KEYS must be 'kid:secret[,kid:secret…]' with secrets of 16+ "
                                  "characters (the first signs, all verify)")
            keys[kid] = secret.encode()
            order.append(kid)
        if not order:
            raise ConfigError("TOLLWAY_DECISION_KEYS is empty")
        return cls(keys=keys, active=order[0])

    def sign(self, message: bytes) -> tuple[str, str]:
        return self.active, self._macs[self.active].hexdigest(message)

    def verify(self, message: bytes, key_id: str | None, signature: str | None) -> bool:
        mac = self._macs.get(key_id or "")
        if mac is None or not signature:
            return False
        return hmac.compare_digest(mac.hexdigest(message), signature)


def _assign(model: BaseModel, **values: object) -> None:
    """``model.name = value`` for each of ``values`` as pydantic does it for our models (validate_assignment off: the
    value into ``__dict__``, the name into the fields set), without its dispatch per assignment."""
    model.__dict__.update(values)
    model.__pydantic_fields_set__.update(values)


def request_digest(env: Envelope) -> str:
    """What the decision governs: the request as policy left it (redacted), its tier and principal.

    Computed at the seal and at every governed stage, so built with C-level copies rather than comprehensions: the
    request's fields minus ``reply_to`` (then what ``json_fields`` would omit), the tier as orjson writes an enum
    (its value) — the same payload as before (tests/workers/test_decisions.py checks it against model_dump's)."""
    request = dict(env.request.__dict__)
    del request["reply_to"]
    # The sections orjson would ask json_fields for, given as their documents here (a callback from C per model
    # costs more than writing them): a message without tool turns (nearly all) is its role and content, the rest as
    # json_fields writes them; params and cache have no field that json_fields leaves out, so they are their fields.
    messages = []
    for message in request["messages"]:
        fields = message.__dict__
        if fields["tool_calls"] is None and fields["tool_call_id"] is None:
            messages.append({"role": fields["role"], "content": fields["content"]})
        else:
            messages.append(json_fields(message))
    request["messages"] = messages
    request["params"] = request["params"].__dict__
    request["cache"] = request["cache"].__dict__
    payload = orjson.dumps([env.tenant, env.tier, env.principal.key_id if env.principal else None,
                            document_of(Request, request)], default=json_fields, option=orjson.OPT_SORT_KEYS)
    digest = _DIGESTS.get(payload)
    if digest is None:
        digest = hashlib.sha256(payload).hexdigest()
        _remember(_DIGESTS, payload, digest)
    return digest


def _decision_message(env: Envelope) -> bytes:
    assert env.policy is not None
    decision = dict(env.policy.__dict__)  # every field but the two signed elsewhere (the signature itself, its key)
    del decision["signature"], decision["key_id"]
    return orjson.dumps(["decision", env.request_id, env.tenant, decision], default=json_fields,
                        option=orjson.OPT_SORT_KEYS)


def sign_decision(env: Envelope, keys: DecisionKeys) -> None:
    """Seal the policy stage's decision on ``env``: the route from here on and the governed request included."""
    decision = env.policy
    assert decision is not None, "only a decided request is signed"
    _assign(decision, route=list(env.route), request_digest=request_digest(env))
    key_id, signature = keys.sign(_decision_message(env))
    _assign(decision, key_id=key_id, signature=signature)


def decision_problem(env: Envelope, keys: DecisionKeys, stage: str) -> str | None:
    """Why ``stage`` must not work ``env`` (None: the decision holds). Called after the stage popped itself off."""
    decision = env.policy
    if decision is None or decision.signature is None:
        return "no signed policy decision"
    if not keys.verify(_decision_message(env), decision.key_id, decision.signature):
        return "the policy decision's signature does not verify (forged, altered or from another request)"
    if decision.request_digest != request_digest(env):
        return "the request changed after the policy decision"
    route = decision.route
    # The model stage may loop through the tools stage (model → tools → model …): that is the route policy decided
    # with the loop collapsed. The tools stage stands in the model's place.
    anchor = "model" if stage == "tools" else stage
    if anchor not in route:
        return f"the {stage} stage is not on the route policy decided ({route})"
    start = route.index(anchor) + (0 if stage == "tools" else 1)
    rest = route[start:]
    # (the same route, the common case, is the same route collapsed: no loop over either)
    if env.route != rest and _collapsed(env.route) != _collapsed(rest):
        return f"the route {env.route} is not the one policy decided ({route})"
    if stage == "tools":
        return tool_calls_problem(env, keys)
    return None


def _tool_calls_message(env: Envelope) -> bytes:
    assert env.tools is not None
    pending = [call.model_dump(mode="json") for call in env.tools.pending]
    return orjson.dumps(["tool_calls", env.request_id, env.tenant, env.tools.steps, env.tools.max_steps,
                         env.tools.offered, pending], option=orjson.OPT_SORT_KEYS)


def sign_tool_calls(env: Envelope, keys: DecisionKeys) -> None:
    """Seal the tool calls the model stage asked for: the tools stage runs no call the model did not ask for."""
    assert env.tools is not None
    env.tools.calls_key_id, env.tools.calls_signature = keys.sign(_tool_calls_message(env))


def tool_calls_problem(env: Envelope, keys: DecisionKeys) -> str | None:
    if env.tools is None or not env.tools.pending:
        return None
    if not keys.verify(_tool_calls_message(env), env.tools.calls_key_id, env.tools.calls_signature):
        return "the tool calls are not the ones the model stage sealed (forged, altered or from another request)"
    return None


def _collapsed(route: list[str]) -> list[str]:
    out: list[str] = []
    for stage in route:
        if stage == "tools" or (out and out[-1] == stage):
            continue
        out.append(stage)
    return out


def outcome_claims(*, request_id: str, tenant: str, status: str, code: str, stage: str, model: str | None,
                   usage: Usage, cost_micros: int, saved_micros: int, task_id: str | None) -> bytes:
    """What the ledger and the audit count about an outcome, canonically (an envelope and its response agree)."""
    fields: list[Any] = ["outcome", request_id, tenant, status, code, stage, model, usage.input_tokens,
                         usage.output_tokens, usage.cached_input_tokens, cost_micros, saved_micros, task_id]
    return orjson.dumps(fields)


def envelope_claims(env: Envelope) -> bytes:
    """``outcome_claims`` of an envelope (signed where a stage ends a request, verified at every stage after it),
    written out: the same list, without a keyword call and an empty ``Usage`` per envelope."""
    outcome, model, tools = env.outcome, env.model, env.tools
    assert outcome is not None
    usage = model.usage if model is not None else _NO_USAGE
    return orjson.dumps([
        "outcome", env.request_id, env.tenant, str(outcome.status), outcome.code, outcome.stage,
        model.model if model is not None else None, usage.input_tokens, usage.output_tokens,
        usage.cached_input_tokens,
        # What the response says it cost (schemas/response.py): the model's turns plus the tool calls'.
        (model.cost_micros if model is not None else 0) + (tools.cost_micros if tools is not None else 0),
        env.cache.saved_micros if env.cache is not None else 0, env.request.task_id])


_NO_USAGE = Usage()  # read only


def sign_outcome(env: Envelope, keys: DecisionKeys) -> None:
    assert env.outcome is not None
    key_id, signature = keys.sign(envelope_claims(env))
    _assign(env.outcome, key_id=key_id, signature=signature)


def outcome_verifies(env: Envelope, keys: DecisionKeys) -> bool:
    assert env.outcome is not None
    return keys.verify(envelope_claims(env), env.outcome.key_id, env.outcome.signature)


def response_claims(response: Any) -> bytes:
    """The claims of a response (``schemas.response.Response``): the same bytes as its envelope's."""
    return outcome_claims(
        request_id=response.request_id, tenant=response.tenant, status=str(response.status), code=response.code,
        stage=response.stage, model=response.model, usage=response.usage, cost_micros=response.cost_micros,
        saved_micros=response.saved_micros, task_id=response.task_id)


def response_verifies(response: Any, keys: DecisionKeys) -> bool:
    """A response carries its outcome's signature: the ledger counts it only then."""
    return keys.verify(response_claims(response), response.key_id, response.signature)
