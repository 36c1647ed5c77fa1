"""Dedup claims for the audit stage: which chain holds (or is writing) the record for a dedup key.

A claim is ``p|<owner>|<ms>`` while a chain is writing the record and ``d|<owner>`` once it is stored and mirrored.
``claim`` answers, per key: ``new`` (claimed now: write it), ``ours`` (this chain claimed it before a crash: write
it unless the chain already has it, then mirror it again) or ``skip`` (recorded, or being recorded by a live chain).
A pending claim of another chain older than ``stale_claim_ms`` is taken over: its process died before appending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from schemas.errors import BackendError

ClaimResult = Literal["new", "ours", "skip"]


class ClaimStore(Protocol):
    async def claim(self, keys: list[str], owner: str, *, now_ms: int,
                    confirm: Sequence[str] = ()) -> list[ClaimResult]:
        """Claim ``keys``; ``confirm`` (keys whose records are stored and mirrored) is confirmed first, in the same
        round trip."""
        ...

    async def confirm(self, keys: list[str], owner: str) -> None: ...


@dataclass
class MemoryClaimStore:
    stale_claim_ms: int = 30_000
    claims: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # key -> (state, owner, ms)

    async def claim(self, keys: list[str], owner: str, *, now_ms: int,
                    confirm: Sequence[str] = ()) -> list[ClaimResult]:
        await self.confirm(list(confirm), owner)
        results: list[ClaimResult] = []
        for key in keys:
            current = self.claims.get(key)
            if current is None or (current[0] == "p" and current[1] != owner
                                   and now_ms - current[2] > self.stale_claim_ms):
                self.claims[key] = ("p", owner, now_ms)
                results.append("new")
            elif current[0] == "p" and current[1] == owner:
                results.append("ours")
            else:
                results.append("skip")
        return results

    async def confirm(self, keys: list[str], owner: str) -> None:
        for key in keys:
            self.claims[key] = ("d", owner, 0)


# One round trip per batch; the script runs atomically, so two chains never both get "new" for one key.
_CLAIM = """
local owner, now, stale, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local out = {}
for i, key in ipairs(KEYS) do
  local value = redis.call('GET', key)
  if not value then
    redis.call('SET', key, 'p|' .. owner .. '|' .. ARGV[2], 'EX', ttl)
    out[i] = 'new'
  else
    local state, holder, at = string.match(value, '^(%a)|([^|]*)|?(%d*)$')
    if state == 'p' and holder == owner then
      out[i] = 'ours'
    elseif state == 'p' and tonumber(at) and now - tonumber(at) > stale then
      redis.call('SET', key, 'p|' .. owner .. '|' .. ARGV[2], 'EX', ttl)
      out[i] = 'new'
    else
      out[i] = 'skip'
    end
  end
end
return out
"""


class RedisClaimStore:
    def __init__(self, redis: Redis, *, namespace: str, ttl_s: int, stale_claim_ms: int = 30_000) -> None:
        self.redis = redis
        self.namespace = namespace
        self.ttl_s = ttl_s
        self.stale_claim_ms = stale_claim_ms
        self._script = redis.register_script(_CLAIM)

    def _key(self, dedup_key: str) -> str:
        return f"{self.namespace}:audit:claim:{dedup_key}"

    async def claim(self, keys: list[str], owner: str, *, now_ms: int,
                    confirm: Sequence[str] = ()) -> list[ClaimResult]:
        if not keys:
            await self.confirm(list(confirm), owner)
            return []
        args: list[str | int] = [owner, now_ms, self.stale_claim_ms, self.ttl_s]
        try:
            raw = await self._confirm_and_claim(confirm, keys, owner, args) if confirm else None
            if raw is None:
                raw = await self._script(keys=[self._key(k) for k in keys], args=args)
        except RedisError as exc:
            raise BackendError(f"audit claim store (Redis) failed: {exc}") from exc
        results: list[ClaimResult] = []
        for answer in raw:
            text = answer.decode() if isinstance(answer, bytes) else str(answer)
            results.append("new" if text == "new" else "ours" if text == "ours" else "skip")
        return results

    async def _confirm_and_claim(self, confirm: Sequence[str], keys: list[str], owner: str,
                                 args: list[str | int]) -> list[bytes] | None:
        """The previous batch's confirmations in front of this batch's claim, in one round trip (a pipeline's own
        script handling would add a SCRIPT EXISTS round trip). None when Redis does not know the script (a restart,
        SCRIPT FLUSH): the confirmations are applied, the caller claims through the script object, which loads it."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in confirm:
                pipe.set(self._key(key), f"d|{owner}", ex=self.ttl_s)
            pipe.evalsha(self._script.sha, len(keys), *[self._key(k) for k in keys], *args)
            try:
                answers = await pipe.execute()
            except NoScriptError:
                return None
        return list(answers[-1])

    async def confirm(self, keys: list[str], owner: str) -> None:
        if not keys:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(self._key(key), f"d|{owner}", ex=self.ttl_s)
                await pipe.execute()
        except RedisError as exc:
            raise BackendError(f"audit claim store (Redis) failed: {exc}") from exc
