"""``tollway ledger reconcile``: the running ledger against an independent aggregation of the responses topic (at
the same offsets) and against the audit log's costs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from schemas.audit import AuditRecord
from schemas.errors import BadEvent
from streams.ledger.aggregate import aggregate_topics
from streams.ledger.client import fetch_snapshot, ledger_url
from streams.ledger.reader import read_records
from streams.runtime.codec import decode_as
from streams.runtime.topics import topology
from streams.settings import Settings
from workers.ledger.aggregator import totals_by_tenant
from workers.ledger.cells import COUNTER_FIELDS, Counters
from workers.ledger.reconcile import AuditComparison, compare_with_audit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellDifference:
    tenant: str
    model: str
    window_start_ms: int
    field: str
    ledger: int
    source: int

    @property
    def difference(self) -> int:
        return self.ledger - self.source


@dataclass
class Reconciliation:
    ledger_totals: dict[str, Counters]
    source_totals: dict[str, Counters]
    differences: list[CellDifference]
    positions: dict[int, int]
    audit: list[AuditComparison] = field(default_factory=list)

    @property
    def audit_difference_micros(self) -> int:
        return sum(abs(row.difference_micros) for row in self.audit)

    @property
    def unaudited(self) -> int:
        return sum(row.unaudited_requests for row in self.audit)

    @property
    def ok(self) -> bool:
        return (not self.differences and self.ledger_totals == self.source_totals
                and self.audit_difference_micros == 0 and not any(row.mismatched for row in self.audit))


async def audited_costs(settings: Settings) -> dict[str, tuple[str, int]]:
    """request_id → (tenant, cost) from ``<prefix>.audit.log`` (the first record of a request; dead letters of
    undecodable bytes have no request and are left out)."""
    out: dict[str, tuple[str, int]] = {}
    for partition, offset, _key, value, _ts in await read_records(settings, topology(settings).audit_log):
        try:
            record = decode_as(value, AuditRecord)
        except BadEvent as exc:
            log.warning("reconcile skipped audit record %d@%d: %s", partition, offset, exc)
            continue
        if record.request_id is not None and record.tenant is not None:
            out.setdefault(record.request_id, (record.tenant, record.cost_micros))
    return out


async def reconcile(settings: Settings, url: str | None = None) -> Reconciliation:
    """Compare every day cell of the running ledger with a second, independent aggregation of the responses topic,
    read up to exactly the offsets the ledger reports having applied (a consistent cut, so traffic may flow), and
    the cost of the requests in that cut with the audit log's.

    The audit log has no offsets in common with the ledger, so the cut is by request: the requests the ledger
    counted are looked up in the audit log read afterwards; those not audited yet (the audit stage follows the
    response) are reported apart, not as a difference.
    """
    snapshot = await fetch_snapshot(url or ledger_url(settings), window="day")
    source = await aggregate_topics(settings, upto=snapshot.positions)
    audited = await audited_costs(settings)
    ledger_cells = {(r.tenant, r.model, r.window_start_ms): r for r in snapshot.rows}
    source_cells = {(r.tenant, r.model, r.window_start_ms): r for r in source.rows(window="day")}
    differences = []
    for key in sorted(ledger_cells.keys() | source_cells.keys()):
        mine, theirs = ledger_cells.get(key), source_cells.get(key)
        for name in COUNTER_FIELDS:
            a, b = (getattr(mine, name) if mine else 0), (getattr(theirs, name) if theirs else 0)
            if a != b:
                differences.append(CellDifference(key[0], key[1], key[2], name, a, b))
    ledger_totals = totals_by_tenant(snapshot.rows)
    audit = compare_with_audit(source.counted, audited, {t: c.cost_micros for t, c in ledger_totals.items()})
    return Reconciliation(ledger_totals=ledger_totals, source_totals=totals_by_tenant(source.rows(window="day")),
                          differences=differences, positions=snapshot.positions, audit=audit)
