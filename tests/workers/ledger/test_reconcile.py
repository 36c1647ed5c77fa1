"""The ledger's cost against the audit log's, per tenant."""

from __future__ import annotations

from workers.ledger.reconcile import compare_with_audit


def test_compare_with_audit_per_tenant() -> None:
    counted = {"a1": ("acme", 100), "a2": ("acme", 50), "a3": ("acme", 7), "g1": ("globex", 10)}
    audited = {"a1": ("acme", 100), "a2": ("acme", 50), "g1": ("globex", 10), "g9": ("globex", 3)}
    acme, globex = compare_with_audit(counted, audited, {"acme": 157, "globex": 10})
    assert (acme.requests, acme.audited_requests, acme.audited_cost_micros) == (3, 2, 150)
    assert (acme.unaudited_requests, acme.unaudited_cost_micros, acme.difference_micros) == (1, 7, 0)
    assert (globex.audited_elsewhere, globex.difference_micros) == (1, 0)  # g9: audited after the ledger's cut


def test_compare_with_audit_finds_a_wrong_cost() -> None:
    (acme,) = compare_with_audit({"a1": ("acme", 100)}, {"a1": ("acme", 90)}, {"acme": 100})
    assert (acme.mismatched, acme.difference_micros) == (1, 10)
