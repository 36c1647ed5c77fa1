"""The ledger against the audit log: per tenant, the cost the ledger counted against the cost audited for the same
requests (``tollway ledger reconcile``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AuditComparison:
    """One tenant's ledger cost against the audit log, over the requests the ledger counted.

    ``difference_micros`` = ledger cost − audited cost − cost not audited yet: zero unless a request's audited cost
    differs from the cost the ledger counted (``mismatched``). Requests not audited yet (the audit stage runs after
    the response is published) are listed apart; ``audited_elsewhere`` are audited requests the ledger has not
    counted (answered after its cut, or never answered).
    """

    tenant: str
    requests: int
    ledger_cost_micros: int
    audited_requests: int
    audited_cost_micros: int
    unaudited_requests: int
    unaudited_cost_micros: int
    mismatched: int
    audited_elsewhere: int

    @property
    def difference_micros(self) -> int:
        return self.ledger_cost_micros - self.audited_cost_micros - self.unaudited_cost_micros


def compare_with_audit(counted: Mapping[str, tuple[str, int]], audited: Mapping[str, tuple[str, int]],
                       ledger_cost: Mapping[str, int]) -> list[AuditComparison]:
    """Per tenant: the ledger's cost (``ledger_cost``, its own totals) against the audited cost of the requests it
    counted (``counted``: request_id → (tenant, cost) from the responses up to the ledger's positions)."""
    tenants = sorted({t for t, _ in counted.values()} | {t for t, _ in audited.values()} | set(ledger_cost))
    rows = []
    for tenant in tenants:
        requests = audited_n = audited_cost = unaudited_n = unaudited_cost = mismatched = 0
        for rid, (owner, cost) in counted.items():
            if owner != tenant:
                continue
            requests += 1
            record = audited.get(rid)
            if record is None:
                unaudited_n, unaudited_cost = unaudited_n + 1, unaudited_cost + cost
                continue
            audited_n, audited_cost = audited_n + 1, audited_cost + record[1]
            mismatched += int(record != (owner, cost))
        elsewhere = sum(1 for rid, (owner, _) in audited.items() if owner == tenant and rid not in counted)
        rows.append(AuditComparison(tenant, requests, ledger_cost.get(tenant, 0), audited_n, audited_cost,
                                    unaudited_n, unaudited_cost, mismatched, elsewhere))
    return rows
