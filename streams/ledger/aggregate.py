"""The cost ledger without a ledger worker: an aggregation of ``<prefix>.responses`` and ``<prefix>.outcomes`` by a
reader of its own (``tollway ledger --source topic``, the demo, the reconciliation's second opinion).
"""

from __future__ import annotations

from schemas.errors import BadEvent
from schemas.ledger import LedgerRow, LedgerSnapshot, OutcomeEvent
from schemas.response import Response
from streams.ledger.reader import read_records, read_topic
from streams.runtime.codec import decode_as
from streams.runtime.topics import ensure_topics, topology
from streams.settings import Settings
from workers.ledger.aggregator import Aggregator
from workers.ledger.dedup import apply_outcome


async def aggregate_topics(settings: Settings, *, upto: dict[int, int] | None = None) -> Aggregator:
    """The ledger rebuilt from ``<prefix>.responses`` (and ``<prefix>.outcomes``) by a reader of its own."""
    await ensure_topics(settings)
    topo = topology(settings)
    agg = Aggregator.empty()
    for partition, offset, key, value, _ts in await read_records(settings, topo.responses, upto=upto):
        try:
            response = decode_as(value, Response)
        except BadEvent:
            if key:  # the first record of a request id decides, as in the worker (workers/ledger.py)
                agg.add_unreadable(key.decode(errors="replace"), partition=partition, offset=offset)
            continue
        agg.add(response, partition=partition, offset=offset)
    for _partition, _offset, value in await read_topic(settings, topo.outcomes):
        try:
            verdict = decode_as(value, OutcomeEvent)
        except BadEvent:
            continue
        apply_outcome(agg.outcomes, tenant=verdict.tenant, task_id=verdict.task_id, outcome=verdict.outcome,
                      at_ns=verdict.at_ns)
    return agg


async def ledger_rows(settings: Settings, tenant: str | None = None, window: str = "day") -> list[LedgerRow]:
    """The cost ledger's rows without a running ledger worker (the demo prints these)."""
    return (await aggregate_topics(settings)).rows(tenant=tenant, window=window)


async def ledger_snapshot(settings: Settings, tenant: str | None = None, window: str | None = "day") -> LedgerSnapshot:
    agg = await aggregate_topics(settings)
    return LedgerSnapshot(rows=agg.rows(tenant=tenant, window=window), outcomes=agg.outcome_rows(tenant=tenant),
                          positions=agg.positions)
