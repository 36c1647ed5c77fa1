"""Rate limits and budgets that hold across any number of worker processes.

A request is admitted by reserving, in one atomic step, every counter it touches: its requests-per-minute and
tokens-per-minute windows (tenant and key) and its budget periods (tenant and key, per day and per month). Either all
counters have room and all are incremented, or none is touched and the request is refused with the first limit it
hit. In Redis that step is a Lua script, run once for a whole batch, so no check-then-increment race exists between
workers and a batch of 500 costs one round trip.

The budget counter holds spent + reserved micro-dollars; beside it ``<counter>:held`` holds the reserved part alone
(reservations in flight). ``settle(reservation_id, actual)`` replaces the estimate with the actual cost once (a
second settle is a no-op) and takes the reservation off ``held``; ``release`` settles at zero. Because a reservation
is an upper bound of the request's cost and admission never lets reservations exceed the cap, spend can pass the cap
only by what a request costs beyond its estimate.

A budget refusal says why, so its Retry-After is honest: ``spent`` (settled spend alone leaves no room: retry when
the period resets), ``in_flight`` (the room is held by reservations of requests still running, which settle at
their actual cost, usually far below the reservation: retry in :data:`IN_FLIGHT_RETRY_S`), ``too_large`` (the
request's reservation exceeds the whole cap: no retry helps, no Retry-After).

The reservation id is the request id: a batch redelivered after a crash finds its reservations and is admitted again
without counting twice.

Rate windows are fixed (one counter per limit per minute, named by the window's index); ``retry_after_s`` is the
time left in the window. Windows and budget periods are computed from the caller's clock, so tests can pin them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from prometheus_client import Counter

from schemas.errors import BackendError

RESERVATION_TTL_S = 3 * 24 * 3600
# Retry-After for a refusal whose room is held by requests in flight: about one request's time through the pipeline.
IN_FLIGHT_RETRY_S = 1.0
HELD_SUFFIX = ":held"

REFUSALS = Counter("tollway_limit_refusals_total", "Admissions refused, by limit kind and why",
                   ["code", "reason"])


@dataclass(frozen=True)
class RateCheck:
    key: str  # the window's counter, e.g. "<prefix>:rl:acme:rpm:29384756"
    limit: int
    amount: int
    ttl_ms: int
    retry_after_s: float


@dataclass(frozen=True)
class BudgetCheck:
    key: str  # the period's counter, e.g. "<prefix>:budget:acme:day:20261129"
    cap_micros: int
    ttl_s: int
    retry_after_s: float


@dataclass(frozen=True)
class AdmissionRequest:
    reservation_id: str
    cost_micros: int
    rates: tuple[RateCheck, ...] = ()
    budgets: tuple[BudgetCheck, ...] = ()


@dataclass(frozen=True)
class Verdict:
    admitted: bool
    code: str = ""  # "rate_limited" | "budget_exceeded"
    limit_key: str = ""
    retry_after_s: float | None = None
    replay: bool = False  # admitted earlier (a redelivery): nothing counted again
    reason: str = ""  # of a refusal: "window" (rate) | "spent" | "in_flight" | "too_large" (budget)


class Limits(Protocol):
    async def admit(self, requests: Sequence[AdmissionRequest]) -> list[Verdict]: ...

    async def settle(self, reservation_id: str, actual_micros: int) -> bool:
        """Replace the reservation by the actual cost; True the first time, False when already settled/unknown."""
        ...

    async def release(self, reservation_id: str) -> bool: ...

    async def settle_many(self, settlements: Sequence[tuple[str, int]]) -> list[bool]:
        """Settle a batch (the audit stage's) in one round trip; one bool per settlement as for ``settle``."""
        ...

    async def counter(self, key: str) -> int: ...


# Verdict kinds, as the Lua script returns them.
_ADMITTED, _REPLAY, _RATE, _SPENT, _IN_FLIGHT, _TOO_LARGE = range(6)


def _verdict(request: AdmissionRequest, kind: int, index: int) -> Verdict:
    if kind == _ADMITTED:
        return Verdict(admitted=True)
    if kind == _REPLAY:
        return Verdict(admitted=True, replay=True)
    if kind == _RATE:
        check = request.rates[index]
        verdict = Verdict(False, "rate_limited", check.key, check.retry_after_s, reason="window")
    else:
        budget = request.budgets[index]
        if kind == _IN_FLIGHT:
            verdict = Verdict(False, "budget_exceeded", budget.key, min(IN_FLIGHT_RETRY_S, budget.retry_after_s),
                              reason="in_flight")
        elif kind == _TOO_LARGE:
            verdict = Verdict(False, "budget_exceeded", budget.key, None, reason="too_large")
        else:
            verdict = Verdict(False, "budget_exceeded", budget.key, budget.retry_after_s, reason="spent")
    REFUSALS.labels(verdict.code, verdict.reason).inc()
    return verdict


def _budget_refusal(cost: int, cap: int, counter: int, held: int) -> int:
    """Why a budget with ``counter`` (spent + held) cannot take ``cost`` more (the Lua script mirrors this)."""
    if cost > cap:
        return _TOO_LARGE
    return _IN_FLIGHT if counter - held + cost <= cap else _SPENT


# ---------------------------------------------------------------------------------------------- in memory
@dataclass
class MemoryLimits:
    """The same semantics in one process (tests, the demo without Redis)."""

    counters: dict[str, int] = field(default_factory=dict)
    reservations: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def admit(self, requests: Sequence[AdmissionRequest]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for request in requests:
            if request.reservation_id in self.reservations:
                verdicts.append(_verdict(request, 1, 0))
                continue
            kind, index = _ADMITTED, 0
            for i, rate in enumerate(request.rates):
                if self.counters.get(rate.key, 0) + rate.amount > rate.limit:
                    kind, index = _RATE, i
                    break
            if kind == _ADMITTED:
                for i, budget in enumerate(request.budgets):
                    counter = self.counters.get(budget.key, 0)
                    if counter + request.cost_micros > budget.cap_micros:
                        held = self.counters.get(budget.key + HELD_SUFFIX, 0)
                        kind, index = _budget_refusal(request.cost_micros, budget.cap_micros, counter, held), i
                        break
            if kind == _ADMITTED:
                for rate in request.rates:
                    self.counters[rate.key] = self.counters.get(rate.key, 0) + rate.amount
                for budget in request.budgets:
                    for key in (budget.key, budget.key + HELD_SUFFIX):
                        self.counters[key] = self.counters.get(key, 0) + request.cost_micros
                self.reservations[request.reservation_id] = {
                    "state": "reserved", "reserved": request.cost_micros, "keys": [b.key for b in request.budgets]}
            verdicts.append(_verdict(request, kind, index))
        return verdicts

    async def _finish(self, reservation_id: str, actual_micros: int, state: str) -> bool:
        reservation = self.reservations.get(reservation_id)
        if reservation is None or reservation["state"] != "reserved":
            return False
        reserved = int(reservation["reserved"])
        for key in reservation["keys"]:
            if key in self.counters:
                self.counters[key] += actual_micros - reserved
            if key + HELD_SUFFIX in self.counters:
                self.counters[key + HELD_SUFFIX] -= reserved
        reservation.update(state=state, actual=actual_micros)
        return True

    async def settle(self, reservation_id: str, actual_micros: int) -> bool:
        return await self._finish(reservation_id, actual_micros, "settled")

    async def release(self, reservation_id: str) -> bool:
        return await self._finish(reservation_id, 0, "released")

    async def settle_many(self, settlements: Sequence[tuple[str, int]]) -> list[bool]:
        return [await self.settle(rid, actual) for rid, actual in settlements]

    async def counter(self, key: str) -> int:
        return self.counters.get(key, 0)


# ---------------------------------------------------------------------------------------------- redis
# KEYS: every counter and reservation key of the batch; ARGV[1]: JSON list of requests that index into KEYS;
# ARGV[2]: reservation TTL. Amounts travel as strings so large micro-dollar values never become "1e+15".
_ADMIT_LUA = """
local reqs = cjson.decode(ARGV[1])
local resv_ttl = tonumber(ARGV[2])
local out = {}
for i, q in ipairs(reqs) do
  local rk = KEYS[q[1]]
  if redis.call('EXISTS', rk) == 1 then
    out[i] = {1, 0}
  else
    local kind, index = 0, 0
    for j, rl in ipairs(q[3]) do
      local cur = tonumber(redis.call('GET', KEYS[rl[1]]) or '0')
      if cur + tonumber(rl[3]) > tonumber(rl[2]) then kind, index = 2, j - 1; break end
    end
    if kind == 0 then
      local cost = tonumber(q[2])
      for j, b in ipairs(q[4]) do
        local cap = tonumber(b[2])
        local cur = tonumber(redis.call('GET', KEYS[b[1]]) or '0')
        if cur + cost > cap then
          -- why (mirrors _budget_refusal): 5 never fits, 4 held by requests in flight, 3 spent
          local held = tonumber(redis.call('GET', KEYS[b[1]] .. ':held') or '0')
          if cost > cap then kind = 5 elseif cur - held + cost <= cap then kind = 4 else kind = 3 end
          index = j - 1
          break
        end
      end
    end
    if kind == 0 then
      for _, rl in ipairs(q[3]) do
        redis.call('INCRBY', KEYS[rl[1]], rl[3])
        redis.call('PEXPIRE', KEYS[rl[1]], rl[4])
      end
      local budget_keys = {}
      for _, b in ipairs(q[4]) do
        redis.call('INCRBY', KEYS[b[1]], q[2])
        redis.call('EXPIRE', KEYS[b[1]], b[3])
        redis.call('INCRBY', KEYS[b[1]] .. ':held', q[2])
        redis.call('EXPIRE', KEYS[b[1]] .. ':held', b[3])
        budget_keys[#budget_keys + 1] = KEYS[b[1]]
      end
      redis.call('HSET', rk, 'state', 'reserved', 'reserved', q[2], 'keys', cjson.encode(budget_keys))
      redis.call('EXPIRE', rk, resv_ttl)
    end
    out[i] = {kind, index}
  end
end
return out
"""

# KEYS[1]: the reservation; ARGV[1]: actual micros (string); ARGV[2]: the final state.
_SETTLE_LUA = """
if redis.call('HGET', KEYS[1], 'state') ~= 'reserved' then return 0 end
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved'))
local delta = tonumber(ARGV[1]) - reserved
local raw_keys = redis.call('HGET', KEYS[1], 'keys')
if raw_keys and raw_keys ~= '{}' then
  for _, k in ipairs(cjson.decode(raw_keys)) do
    if delta ~= 0 and redis.call('EXISTS', k) == 1 then redis.call('INCRBY', k, string.format('%d', delta)) end
    if redis.call('EXISTS', k .. ':held') == 1 then
      redis.call('DECRBY', k .. ':held', string.format('%d', reserved))
    end
  end
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'actual', ARGV[1])
return 1
"""


class RedisLimits:
    """The Redis implementation. ``prefix`` namespaces every key (deployments and test runs share a Redis).

    The budget keys of a reservation are read inside the settle script, not declared in KEYS: fine on one Redis,
    not on Redis Cluster (there, hash-tag the keys by tenant and declare them).
    """

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self._admit = client.register_script(_ADMIT_LUA)
        self._settle = client.register_script(_SETTLE_LUA)

    def reservation_key(self, reservation_id: str) -> str:
        return f"{self.prefix}:resv:{reservation_id}"

    async def admit(self, requests: Sequence[AdmissionRequest]) -> list[Verdict]:
        if not requests:
            return []
        keys: list[str] = []
        index: dict[str, int] = {}

        def slot(key: str) -> int:
            if key not in index:
                keys.append(key)
                index[key] = len(keys)  # Lua is 1-based
            return index[key]

        payload = [
            [slot(self.reservation_key(r.reservation_id)), str(r.cost_micros),
             [[slot(c.key), str(c.limit), str(c.amount), c.ttl_ms] for c in r.rates],
             [[slot(b.key), str(b.cap_micros), b.ttl_s] for b in r.budgets]]
            for r in requests
        ]
        try:
            raw = await self._admit(keys=keys, args=[json.dumps(payload), RESERVATION_TTL_S])
        except Exception as exc:
            raise BackendError(f"Redis admission script failed: {exc}") from exc
        return [_verdict(r, int(kind), int(i)) for r, (kind, i) in zip(requests, raw, strict=True)]

    async def _finish(self, reservation_id: str, actual_micros: int, state: str) -> bool:
        try:
            done = await self._settle(keys=[self.reservation_key(reservation_id)], args=[str(actual_micros), state])
        except Exception as exc:
            raise BackendError(f"Redis settle script failed: {exc}") from exc
        return bool(done)

    async def settle(self, reservation_id: str, actual_micros: int) -> bool:
        return await self._finish(reservation_id, actual_micros, "settled")

    async def release(self, reservation_id: str) -> bool:
        return await self._finish(reservation_id, 0, "released")

    async def settle_many(self, settlements: Sequence[tuple[str, int]]) -> list[bool]:
        """Settle a batch in one round trip (the audit stage sees requests in batches)."""
        if not settlements:
            return []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for reservation_id, actual in settlements:
                    await self._settle(keys=[self.reservation_key(reservation_id)], args=[str(actual), "settled"],
                                       client=pipe)
                results = await pipe.execute()
        except Exception as exc:
            raise BackendError(f"Redis settle pipeline failed: {exc}") from exc
        return [bool(r) for r in results]

    async def counter(self, key: str) -> int:
        value = await self.client.get(key)
        return int(value or 0)


# ---------------------------------------------------------------------------------------------- building checks
@dataclass(frozen=True)
class Scope:
    """Whose counters: the tenant, or one key of the tenant."""

    name: str  # "acme" or "acme/k_0123abcd"
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    daily_micros: int | None = None
    monthly_micros: int | None = None


@dataclass(frozen=True)
class _Calendar:
    minute: int
    retry_minute_s: float
    day: str
    retry_day_s: float
    month: str
    retry_month_s: float


@lru_cache(maxsize=8)
def _calendar(now_ns: int) -> _Calendar:
    """Window and periods of an instant; cached because a whole batch is decided at one ``now_ns``."""
    now = datetime.fromtimestamp(now_ns / 1e9, UTC)
    day_end = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    month_end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return _Calendar(now_ns // 60_000_000_000, 60.0 - (now_ns % 60_000_000_000) / 1e9, f"{now:%Y%m%d}",
                     (day_end - now).total_seconds(), f"{now:%Y%m}", (month_end - now).total_seconds())


def build_admission(prefix: str, reservation_id: str, scopes: Sequence[Scope], *, cost_micros: int, tokens: int,
                    now_ns: int) -> AdmissionRequest:
    """The counters one request must fit in, for the window and periods ``now_ns`` falls in (UTC)."""
    cal = _calendar(now_ns)
    rates: list[RateCheck] = []
    budgets: list[BudgetCheck] = []
    for scope in scopes:
        if scope.requests_per_minute is not None:
            rates.append(RateCheck(f"{prefix}:rl:{scope.name}:rpm:{cal.minute}", scope.requests_per_minute, 1,
                                   120_000, cal.retry_minute_s))
        if scope.tokens_per_minute is not None:
            rates.append(RateCheck(f"{prefix}:rl:{scope.name}:tpm:{cal.minute}", scope.tokens_per_minute, tokens,
                                   120_000, cal.retry_minute_s))
        if scope.daily_micros is not None:
            budgets.append(BudgetCheck(f"{prefix}:budget:{scope.name}:day:{cal.day}", scope.daily_micros,
                                       2 * 86_400, cal.retry_day_s))
        if scope.monthly_micros is not None:
            budgets.append(BudgetCheck(f"{prefix}:budget:{scope.name}:month:{cal.month}", scope.monthly_micros,
                                       62 * 86_400, cal.retry_month_s))
    return AdmissionRequest(reservation_id, cost_micros, tuple(rates), tuple(budgets))
