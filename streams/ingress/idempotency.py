"""``Idempotency-Key`` for the HTTP ingress: a retried request is neither worked nor charged twice.

A key is scoped by who sent it (tenant and key id), so two callers' keys never meet. Its record lives in Redis:

    {"fp": <sha256 of the request body>, "attempt": 0, "state": "pending" | "done", "retryable": bool,
     "response": <the Response, once done>}

The first request with a key *claims* it atomically (a Lua script: one round trip, no check-then-set race) and gets
the deterministic request id ``request_id_for(scope, attempt)``; a pending claim is a lease that runs out with the
request's deadline, so a crashed ingress does not block the key forever. A duplicate that arrives while the first is
pending waits for the same request id's response; one that arrives after gets the stored response back, without
publishing anything. A body that differs from the first one is refused (the caller reused a key by mistake).

Outcomes that were *not worked* and invite a retry (``rate_limited``, ``budget_exceeded``) are stored as retryable: the
next request with the key claims attempt n+1 with a fresh request id. A fresh id matters: the audit stage and the
ledger deduplicate by request id, so re-publishing the old id would leave the successful retry unaudited and
uncounted.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from schemas.errors import ServiceUnavailable
from schemas.response import Response

RETRYABLE_CODES = frozenset({"rate_limited", "budget_exceeded"})

_CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then
  local record = cjson.decode(current)
  if record.state == 'done' and record.retryable and record.fp == ARGV[1] then
    local next = cjson.encode({fp = ARGV[1], attempt = record.attempt + 1, state = 'pending'})
    redis.call('SET', KEYS[1], next, 'EX', ARGV[2])
    return {'claimed', next}
  end
  return {'existing', current}
end
local fresh = cjson.encode({fp = ARGV[1], attempt = 0, state = 'pending'})
redis.call('SET', KEYS[1], fresh, 'EX', ARGV[2])
return {'claimed', fresh}
"""

# Release a pending claim (nothing was published) only if it is still ours: same attempt, still pending.
_RELEASE = """
local current = redis.call('GET', KEYS[1])
if current then
  local record = cjson.decode(current)
  if record.state == 'pending' and tostring(record.attempt) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    claimed: bool  # True: this caller publishes; False: someone else did (see ``state``)
    fingerprint: str
    attempt: int
    state: Literal["pending", "done"]
    response: Response | None = None


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def scope_of(tenant: str, key_id: str | None, idempotency_key: str) -> str:
    return hashlib.sha256(orjson.dumps([tenant, key_id or "", idempotency_key])).hexdigest()


def request_id_for(scope: str, attempt: int) -> str:
    return "idem_" + hashlib.sha256(f"{scope}:{attempt}".encode()).hexdigest()[:32]


def _claim_of(raw: bytes | str, claimed: bool) -> Claim:
    record: dict[str, Any] = orjson.loads(raw)
    stored = record.get("response")
    return Claim(claimed=claimed, fingerprint=record["fp"], attempt=int(record["attempt"]), state=record["state"],
                 response=Response.model_validate(stored) if stored else None)


def _done_record(claim: Claim, response: Response) -> bytes:
    return orjson.dumps({"fp": claim.fingerprint, "attempt": claim.attempt, "state": "done",
                         "retryable": response.code in RETRYABLE_CODES,
                         "response": response.model_dump(mode="json")})


class IdempotencyStore(Protocol):
    async def claim(self, scope: str, fp: str, lease_s: float) -> Claim: ...
    async def finish(self, scope: str, claim: Claim, response: Response) -> None: ...
    async def release(self, scope: str, claim: Claim) -> None: ...
    async def get(self, scope: str) -> Claim | None: ...


class RedisIdempotencyStore:
    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)

    def _key(self, scope: str) -> str:
        return f"{self.prefix}:idem:{scope}"

    async def claim(self, scope: str, fp: str, lease_s: float) -> Claim:
        try:
            verdict, raw = await self._claim(keys=[self._key(scope)], args=[fp, max(1, int(lease_s))])
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"Redis is not reachable for idempotency keys: {exc}") from exc
        return _claim_of(raw, verdict in (b"claimed", "claimed"))

    async def finish(self, scope: str, claim: Claim, response: Response) -> None:
        try:
            await self.client.set(self._key(scope), _done_record(claim, response), ex=self.ttl_s)
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"Redis is not reachable for idempotency keys: {exc}") from exc

    async def release(self, scope: str, claim: Claim) -> None:
        try:
            await self._release(keys=[self._key(scope)], args=[str(claim.attempt)])
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"Redis is not reachable for idempotency keys: {exc}") from exc

    async def get(self, scope: str) -> Claim | None:
        try:
            raw = await self.client.get(self._key(scope))
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"Redis is not reachable for idempotency keys: {exc}") from exc
        return _claim_of(raw, False) if raw else None


@dataclass
class MemoryIdempotencyStore:
    """The same semantics in one process (unit tests, single-process dev)."""

    ttl_s: int = 86_400
    records: dict[str, tuple[float, bytes]] = field(default_factory=dict)

    def _live(self, scope: str) -> bytes | None:
        entry = self.records.get(scope)
        if entry is None or entry[0] < time.monotonic():
            self.records.pop(scope, None)
            return None
        return entry[1]

    async def claim(self, scope: str, fp: str, lease_s: float) -> Claim:
        current = self._live(scope)
        if current is not None:
            record = orjson.loads(current)
            if not (record["state"] == "done" and record.get("retryable") and record["fp"] == fp):
                return _claim_of(current, False)
            attempt = int(record["attempt"]) + 1
        else:
            attempt = 0
        fresh = orjson.dumps({"fp": fp, "attempt": attempt, "state": "pending"})
        self.records[scope] = (time.monotonic() + max(1, int(lease_s)), fresh)
        return _claim_of(fresh, True)

    async def finish(self, scope: str, claim: Claim, response: Response) -> None:
        self.records[scope] = (time.monotonic() + self.ttl_s, _done_record(claim, response))

    async def release(self, scope: str, claim: Claim) -> None:
        current = self._live(scope)
        if current is not None:
            record = orjson.loads(current)
            if record["state"] == "pending" and int(record["attempt"]) == claim.attempt:
                del self.records[scope]

    async def get(self, scope: str) -> Claim | None:
        current = self._live(scope)
        return _claim_of(current, False) if current is not None else None
