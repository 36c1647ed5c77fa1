"""Re-embedding: move a tenant's semantic index from one embedder's vector space to another's.

The cache keeps each embedder's vectors in their own log (``workers.cache.store``); after a model change the new
model's log is empty and semantic hits start from zero while exact hits go on. :func:`reembed` reads the old log
page by page, drops expired records, embeds the prompts with the new model in batches and appends them to the new
log with the same entry key, scope and expiry, so every live entry is found again by meaning. Entries the new log
already holds (an earlier or interrupted run, or entries the new model cached itself) are skipped, so running it again
— or after a crash — appends nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from workers.cache.store import CacheStore, LogRecord
from workers.embedding import Embedder

PAGE = 2_000


@dataclass
class ReembedResult:
    tenant: str
    read: int = 0
    expired: int = 0
    present: int = 0  # already in the target log: skipped
    written: int = 0


async def reembed(source: CacheStore, target: CacheStore, embedder: Embedder, tenant: str, *, now_ms: int,
                  batch: int = 256, progress: Callable[[int], None] | None = None) -> ReembedResult:
    """Copy ``tenant``'s live semantic records from ``source`` to ``target``, embedded with ``embedder``."""
    result = ReembedResult(tenant)
    present = await _entry_keys(target, tenant)
    cursor = "0"
    while True:
        records, cursor = await source.read_log(tenant, cursor, limit=PAGE)
        result.read += len(records)
        live = [r for r in records if r.expires_at_ms > now_ms]
        result.expired += len(records) - len(live)
        fresh = []
        for record in live:
            if record.key in present:
                result.present += 1
            else:
                present.add(record.key)  # also a key the old log holds twice
                fresh.append(record)
        live = fresh
        for start in range(0, len(live), batch):
            chunk = live[start:start + batch]
            vectors = await embedder.embed([r.prompt for r in chunk])
            await target.append_log(tenant, [LogRecord(r.key, r.scope, r.prompt, r.expires_at_ms, vector)
                                             for r, vector in zip(chunk, vectors, strict=True)])
            result.written += len(chunk)
        if progress is not None:
            progress(len(records))
        if len(records) < PAGE:
            return result


async def _entry_keys(store: CacheStore, tenant: str) -> set[str]:
    keys: set[str] = set()
    cursor = "0"
    while True:
        records, cursor = await store.read_log(tenant, cursor, limit=PAGE)
        keys.update(r.key for r in records)
        if len(records) < PAGE:
            return keys
