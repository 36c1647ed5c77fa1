"""Where cached answers live: a :class:`CacheStore` protocol with a Redis and an in-memory implementation.

Redis layout (``ns`` is the deployment's topic prefix, so tests and deployments sharing a Redis never collide;
``space`` is the embedder's identity, :func:`vector_space`: model, version, dimension, weights hash)::

    {ns}:cache:{tenant}:e:{key}          the entry (answer, cost, model, prompt) as JSON, with the entry's TTL
    {ns}:cache:{tenant}:log:{space}      a stream: one record per semantic entry (key, scope, prompt, vector,
                                         expiry), written and read only by processes running that embedder

Entries do not depend on the embedder (an exact hit survives a model change); their vectors do, so each embedder
has its own log and vectors of two models are never compared. After a model change the new log starts empty:
``tollway cache reembed --from SPACE`` (``workers.cache.reembed``) embeds the old log's prompts with the new model.

An entry is written once and found two ways: by its exact key, or — through the semantic index — by a similar
prompt, after which the same key is read. The tenant is in every key and the key hash includes it too.

**Sharing the semantic index across processes.** Redis is the source of truth; each process keeps a
:class:`SemanticMirror`: per tenant a cursor into the tenant's log stream and, per scope, a numpy
:class:`~workers.vectors.matrix.VectorMatrix` of the vectors seen so far, with each row's key and expiry (prompts
and answers stay in Redis: at 100k entries they would cost every worker tens of MB). Before a batch is looked up,
the mirror reads only the log records added since its cursor (one ``XRANGE`` per tenant in the batch, pipelined with
the batch's ``MGET`` of exact keys: :meth:`CacheStore.get_and_read_logs`), so an entry written by any process is
searchable by every other one on its next batch.
A new process replays the stream from the start (bounded by ``MAXLEN``). Expiry is enforced twice: the mirror skips
rows whose expiry passed, and a candidate is only served after its entry is read from Redis, which forgets it at TTL.

Every Redis error becomes a :class:`~schemas.errors.BackendError` here; callers turn that into a cache miss.
redis-py ≥ 5.0.1 discards a connection whose command was cancelled, so a cancelled call never hands its reply to
the next caller; each command or pipeline takes its own connection from the pool.
"""

from __future__ import annotations

import re
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol, cast

import numpy as np
import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from schemas.errors import BackendError
from workers.embedding import Embedder, Vectors
from workers.vectors.matrix import VectorMatrix

LOG_MAXLEN = 500_000  # semantic entries kept per tenant stream (approximate trim)
# Log records per XRANGE page. Small pages keep a cold start's transient memory small: each record arrives as
# ~1 KB of short-lived bytes interleaved with the mirror's long-lived arrays, and 10k-record pages left ~25 MB
# of heap holes in a worker replaying 100k entries (2k: ~10 MB), for 50 round trips instead of 10.
_READ_COUNT = 2_000


@dataclass(frozen=True)
class CacheEntry:
    answer: str
    cost_micros: int
    model: str
    prompt: str
    created_at_ms: int
    expires_at_ms: int
    # The request whose answer this is: a redelivery of that request (after a crash between produce and commit) must
    # not be served its own answer as a cache hit — its second response would differ from the first.
    request_id: str = ""

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_json(cls, raw: bytes | str) -> CacheEntry:
        data = orjson.loads(raw)
        # Fields a newer writer added are ignored, so processes of two versions can share one cache during a rollout.
        return cls(**{name: value for name, value in data.items() if name in _ENTRY_FIELDS})


_ENTRY_FIELDS = frozenset(f.name for f in fields(CacheEntry))


@dataclass(frozen=True)
class CacheWrite:
    tenant: str
    key: str
    scope: str
    entry: CacheEntry
    vector: Vectors  # the prompt's embedding (unit length)


@dataclass(frozen=True)
class LogRecord:
    """One semantic entry as the log stream carries it."""

    key: str
    scope: str
    prompt: str
    expires_at_ms: int
    vector: Vectors


class CacheStore(Protocol):
    async def get(self, tenant_keys: Sequence[tuple[str, str]]) -> list[CacheEntry | None]:
        """Entries by ``(tenant, key)``, in order; ``None`` where missing or expired."""
        ...

    async def put(self, writes: Sequence[CacheWrite], *, ttl_s: Sequence[int]) -> None: ...

    async def tenants(self) -> list[str]:
        """Tenants with a semantic log (in this store's vector space)."""
        ...

    async def append_log(self, tenant: str, records: Sequence[LogRecord]) -> None:
        """Add semantic records to the tenant's log without writing entries (re-embedding)."""
        ...

    async def read_log(self, tenant: str, after: str, *, limit: int | None = None) -> tuple[list[LogRecord], str]:
        """Semantic records of ``tenant`` added after cursor ``after`` (``"0"`` = from the start), at most ``limit``
        of them (``None``: all), and the new cursor."""
        ...

    async def get_and_read_logs(self, tenant_keys: Sequence[tuple[str, str]], after: Mapping[str, str]
                                ) -> tuple[list[CacheEntry | None], dict[str, tuple[list[LogRecord], str]]]:
        """``get(tenant_keys)`` and, per tenant of ``after``, one page of ``read_log(tenant, after[tenant])`` (what
        :meth:`SemanticMirror.refresh` reads at a time): what a lookup needs before it can search, together (one Redis
        round trip instead of 1 + one per tenant)."""
        ...


def vector_space(embedder: Embedder) -> str:
    """The embedder's identity as a Redis key part: its name (which carries model and version) and dimension."""
    identity = embedder.name if f"d{embedder.dim}" in embedder.name else f"{embedder.name}-d{embedder.dim}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", identity)


# A batch of writes (RedisCacheStore.put). KEYS: the entry keys, then each tenant's log key once. ARGV: the number of
# writes, the log's MAXLEN, the longest TTL, then per write its TTL, entry JSON, log (1-based after the entries),
# key, scope, prompt, expiry and vector bytes. The same commands, in the same order, as a pipeline of them.
_PUT = """
local n, maxlen, longest = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local a = 4
for i = 1, n do
  redis.call('SET', KEYS[i], ARGV[a + 1], 'EX', ARGV[a])
  redis.call('XADD', KEYS[n + tonumber(ARGV[a + 2])], 'MAXLEN', '~', maxlen, '*',
             'k', ARGV[a + 3], 's', ARGV[a + 4], 'p', ARGV[a + 5], 'x', ARGV[a + 6], 'v', ARGV[a + 7])
  a = a + 8
end
for j = n + 1, #KEYS do
  redis.call('EXPIRE', KEYS[j], longest, 'GT')
  redis.call('EXPIRE', KEYS[j], longest, 'NX')
end
return n
"""


def _vector_bytes(vector: Vectors) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


class RedisCacheStore:
    def __init__(self, client: Redis, *, namespace: str, vectors: str) -> None:
        self.client = client
        self.namespace = namespace
        self.vectors = vectors  # the embedder's vector_space: whose log this store reads and writes
        self._put: AsyncScript | None = None  # registered on the first write

    def entry_key(self, tenant: str, key: str) -> str:
        return f"{self.namespace}:cache:{tenant}:e:{key}"

    def log_key(self, tenant: str) -> str:
        return f"{self.namespace}:cache:{tenant}:log:{self.vectors}"

    async def tenants(self) -> list[str]:
        """Tenants with a semantic log in this store's vector space."""
        prefix, suffix = f"{self.namespace}:cache:", f":log:{self.vectors}"
        found: set[str] = set()
        try:
            async for raw in self.client.scan_iter(match=f"{prefix}*{suffix}", count=1000):
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                found.add(name[len(prefix):-len(suffix)])
        except (RedisError, OSError) as exc:
            raise BackendError(f"redis cache scan failed: {exc}") from exc
        return sorted(found)

    async def append_log(self, tenant: str, records: Sequence[LogRecord]) -> None:
        """Add semantic records without touching entries (re-embedding); the log keeps its longest TTL."""
        if not records:
            return
        log_key = self.log_key(tenant)
        ttl_s = max(1, (max(r.expires_at_ms for r in records) - time.time_ns() // 1_000_000) // 1000)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for record in records:
                    fields: dict[Any, Any] = {"k": record.key, "s": record.scope, "p": record.prompt,
                                              "x": record.expires_at_ms, "v": _vector_bytes(record.vector)}
                    pipe.xadd(log_key, fields, maxlen=LOG_MAXLEN, approximate=True)
                pipe.expire(log_key, ttl_s, gt=True)
                pipe.expire(log_key, ttl_s, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendError(f"redis cache write failed: {exc}") from exc

    async def get(self, tenant_keys: Sequence[tuple[str, str]]) -> list[CacheEntry | None]:
        if not tenant_keys:
            return []
        try:
            raws = await self.client.mget([self.entry_key(t, k) for t, k in tenant_keys])
        except (RedisError, OSError) as exc:
            raise BackendError(f"redis cache read failed: {exc}") from exc
        return [CacheEntry.from_json(raw) if raw is not None else None for raw in raws]

    async def put(self, writes: Sequence[CacheWrite], *, ttl_s: Sequence[int]) -> None:
        """Per write ``SET entry EX ttl`` and ``XADD log MAXLEN ~``; then, once per tenant, the log lives as long as
        its longest-lived entry: extended (``EXPIRE GT``), or set when it had no TTL (``NX``). One script call for
        the batch (:data:`_PUT`): the same commands in the same order as a pipeline of them, with one reply to read
        instead of two per write (reading those replies was most of a fill's client CPU)."""
        if not writes:
            return
        logs: dict[str, int] = {}  # log key -> its position after the entry keys in KEYS (1-based)
        args: list[bytes | str | int] = [len(writes), LOG_MAXLEN, max(ttl_s)]
        for write, ttl in zip(writes, ttl_s, strict=True):
            log_key = self.log_key(write.tenant)
            entry = write.entry
            args += [ttl, entry.to_json(), logs.setdefault(log_key, len(logs) + 1), write.key, write.scope,
                     entry.prompt, entry.expires_at_ms, _vector_bytes(write.vector)]
        keys = [self.entry_key(write.tenant, write.key) for write in writes]
        if self._put is None:
            self._put = self.client.register_script(_PUT)
        try:
            await self._put(keys=[*keys, *logs], args=args)
        except (RedisError, OSError) as exc:
            raise BackendError(f"redis cache write failed: {exc}") from exc

    async def read_log(self, tenant: str, after: str, *, limit: int | None = None) -> tuple[list[LogRecord], str]:
        records: list[LogRecord] = []
        cursor = after
        try:
            while True:
                count = _READ_COUNT if limit is None else min(_READ_COUNT, limit - len(records))
                batch: list[tuple[bytes, dict[bytes, bytes]]] = cast(
                    "list[tuple[bytes, dict[bytes, bytes]]]",
                    await self.client.xrange(self.log_key(tenant), min=_after(cursor), max="+", count=count) or [])
                cursor = _log_records(batch, cursor, records)
                if len(batch) < count or (limit is not None and len(records) >= limit):
                    return records, cursor
        except (RedisError, OSError) as exc:
            raise BackendError(f"redis cache log read failed: {exc}") from exc

    async def get_and_read_logs(self, tenant_keys: Sequence[tuple[str, str]], after: Mapping[str, str]
                                ) -> tuple[list[CacheEntry | None], dict[str, tuple[list[LogRecord], str]]]:
        """One pipeline: the ``MGET`` of the entries and one ``XRANGE`` page per tenant."""
        tenants = list(after)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                if tenant_keys:
                    pipe.mget([self.entry_key(t, k) for t, k in tenant_keys])
                for tenant in tenants:
                    pipe.xrange(self.log_key(tenant), min=_after(after[tenant]), max="+", count=_READ_COUNT)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendError(f"redis cache read failed: {exc}") from exc
        raws = replies.pop(0) if tenant_keys else []
        entries = [CacheEntry.from_json(raw) if raw is not None else None for raw in raws]
        pages: dict[str, tuple[list[LogRecord], str]] = {}
        for tenant, reply in zip(tenants, replies, strict=True):
            records: list[LogRecord] = []
            cursor = _log_records(cast("list[tuple[bytes, dict[bytes, bytes]]]", reply or []), after[tenant], records)
            pages[tenant] = records, cursor
        return entries, pages


def _after(cursor: str) -> str:
    """The XRANGE start just after ``cursor`` (``"0"``: the whole stream)."""
    return "-" if cursor == "0" else f"({cursor}"


def _log_records(batch: list[tuple[bytes, dict[bytes, bytes]]], cursor: str, into: list[LogRecord]) -> str:
    """Append the stream page's records to ``into``; returns the cursor after them."""
    for record_id, values in batch:
        cursor = record_id.decode()
        into.append(LogRecord(key=values[b"k"].decode(), scope=values[b"s"].decode(), prompt=values[b"p"].decode(),
                              expires_at_ms=int(values[b"x"]), vector=np.frombuffer(values[b"v"], dtype=np.float32)))
    return cursor


@dataclass
class MemoryCacheStore:
    """Same contract in process memory; ``now_ms`` decides expiry so tests can move time."""

    now_ms: Any = None  # Callable[[], int]; None → wall clock
    entries: dict[tuple[str, str], CacheEntry] = field(default_factory=dict)
    logs: dict[str, list[LogRecord]] = field(default_factory=dict)
    fail: bool = False  # tests flip this to simulate Redis being down

    def _now(self) -> int:
        import time

        return int(self.now_ms()) if self.now_ms is not None else time.time_ns() // 1_000_000

    async def get(self, tenant_keys: Sequence[tuple[str, str]]) -> list[CacheEntry | None]:
        if self.fail:
            raise BackendError("memory cache store is failing (test)")
        now = self._now()
        found = [self.entries.get(tk) for tk in tenant_keys]
        return [e if e is not None and e.expires_at_ms > now else None for e in found]

    async def put(self, writes: Sequence[CacheWrite], *, ttl_s: Sequence[int]) -> None:
        if self.fail:
            raise BackendError("memory cache store is failing (test)")
        for write in writes:
            self.entries[(write.tenant, write.key)] = write.entry
            self.logs.setdefault(write.tenant, []).append(
                LogRecord(write.key, write.scope, write.entry.prompt, write.entry.expires_at_ms,
                          np.asarray(write.vector, dtype=np.float32)))

    async def tenants(self) -> list[str]:
        return sorted(self.logs)

    async def append_log(self, tenant: str, records: Sequence[LogRecord]) -> None:
        if self.fail:
            raise BackendError("memory cache store is failing (test)")
        self.logs.setdefault(tenant, []).extend(records)

    async def read_log(self, tenant: str, after: str, *, limit: int | None = None) -> tuple[list[LogRecord], str]:
        if self.fail:
            raise BackendError("memory cache store is failing (test)")
        log = self.logs.get(tenant, [])
        start = int(after)
        page = log[start:] if limit is None else log[start:start + limit]
        return page, str(start + len(page))

    async def get_and_read_logs(self, tenant_keys: Sequence[tuple[str, str]], after: Mapping[str, str]
                                ) -> tuple[list[CacheEntry | None], dict[str, tuple[list[LogRecord], str]]]:
        entries = await self.get(tenant_keys)
        return entries, {tenant: await self.read_log(tenant, cursor, limit=_READ_COUNT)
                         for tenant, cursor in after.items()}


@dataclass
class Candidate:
    key: str
    similarity: float


class _PackedKeys:
    """Entry keys as one UTF-8 byte string plus offsets: ~72 bytes a key instead of ~120 for a list of ``str``."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._ends = array("Q")

    def extend(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._data += key.encode()
            self._ends.append(len(self._data))

    def __getitem__(self, index: int) -> str:
        start = self._ends[index - 1] if index else 0
        return self._data[start:self._ends[index]].decode()


@dataclass
class _ScopeIndex:
    """One scope's rows: vectors in the matrix, keys and expiry by row. Prompts stay in Redis (the guard reads a
    candidate's prompt from its entry), so a 100k-entry mirror holds vectors and ids only."""

    matrix: VectorMatrix
    keys: _PackedKeys = field(default_factory=_PackedKeys)
    expires_at_ms: array[int] = field(default_factory=lambda: array("q"))


@dataclass
class _TenantMirror:
    cursor: str = "0"
    scopes: dict[str, _ScopeIndex] = field(default_factory=dict)


class SemanticMirror:
    """This process's numpy copy of every tenant's semantic entries (see the module docstring)."""

    def __init__(self, dim: int, *, dtype: type[np.floating] = np.float16) -> None:
        self.dim = dim
        self.dtype = dtype
        self._tenants: dict[str, _TenantMirror] = {}

    def size(self, tenant: str) -> int:
        mirror = self._tenants.get(tenant)
        return sum(s.matrix.live_count for s in mirror.scopes.values()) if mirror else 0

    def cursor(self, tenant: str) -> str:
        """Where the tenant's next read of the log starts (``"0"``: it has read nothing yet)."""
        mirror = self._tenants.get(tenant)
        return mirror.cursor if mirror is not None else "0"

    async def refresh(self, store: CacheStore, tenant: str) -> int:
        """Pull the tenant's records added since the last refresh; returns how many arrived.

        A page at a time: a new process replaying a long log never holds more than one page of records (each
        carries its vector as bytes) next to the mirror it is building.
        """
        arrived = 0
        while True:
            records, cursor = await store.read_log(tenant, self.cursor(tenant), limit=_READ_COUNT)
            arrived += len(records)
            if not self.apply_page(tenant, (records, cursor)):
                return arrived

    def apply_page(self, tenant: str, page: tuple[list[LogRecord], str]) -> bool:
        """Add one page read from the tenant's cursor (``read_log``, ``get_and_read_logs``) and move the cursor past
        it; True when the page was full (more records may be waiting: :meth:`refresh` reads them)."""
        records, cursor = page
        self.add(tenant, records)
        self._tenants[tenant].cursor = cursor
        return len(records) >= _READ_COUNT

    def add(self, tenant: str, records: Sequence[LogRecord]) -> None:
        mirror = self._tenants.setdefault(tenant, _TenantMirror())
        by_scope: dict[str, list[LogRecord]] = {}
        for record in records:
            if len(record.vector) == self.dim:  # a record from an embedder of another size is unusable here
                by_scope.setdefault(record.scope, []).append(record)
        for scope, group in by_scope.items():
            index = mirror.scopes.get(scope)
            if index is None:
                index = mirror.scopes[scope] = _ScopeIndex(VectorMatrix(self.dim, dtype=self.dtype))
            index.matrix.add(np.stack([r.vector for r in group]))
            index.keys.extend(r.key for r in group)
            index.expires_at_ms.extend(r.expires_at_ms for r in group)

    def search(self, tenant: str, scopes: Sequence[str], queries: Vectors, *, k: int, threshold: float,
               now_ms: int) -> list[list[Candidate]]:
        """Up to ``k`` unexpired candidates per query at or above ``threshold``, best first, within its scope."""
        results: list[list[Candidate]] = [[] for _ in scopes]
        mirror = self._tenants.get(tenant)
        if mirror is None:
            return results
        by_scope: dict[str, list[int]] = {}
        for i, scope in enumerate(scopes):
            by_scope.setdefault(scope, []).append(i)
        for scope, positions in by_scope.items():
            index = mirror.scopes.get(scope)
            if index is None:
                continue
            # Ask for a few extra: expired rows are only dropped here, lazily. Scores under the threshold are never
            # used (the loop below stops at the first), so the matrix may skip a query that cannot reach it.
            scores, rows = index.matrix.search(queries[positions], k + 4, floor=threshold)
            for position, row_scores, row_ids in zip(positions, scores.tolist(), rows.tolist(), strict=True):
                for score, row in zip(row_scores, row_ids, strict=True):
                    if row < 0 or score < threshold:
                        break
                    if index.expires_at_ms[row] <= now_ms:
                        index.matrix.remove([row])
                        continue
                    results[position].append(Candidate(index.keys[row], float(score)))
                    if len(results[position]) >= k:
                        break
        return results
