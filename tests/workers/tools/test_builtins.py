from __future__ import annotations

import pytest

from schemas.errors import ToolFailure
from workers.tools.builtins import Builtins, MemoryTicketStore, calculate, seed_demo_tickets


@pytest.mark.parametrize(("expression", "value"), [("17*23", 391), ("(2+3)*4", 20), ("7/2", 3.5), ("2^10", 1024),
                                                    ("-3 + 1", -2), ("10 // 3", 3)])
def test_calculator(expression: str, value: float) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize("expression", ["__import__('os')", "1/0", "2**1000", "a+1", "", "9" * 300, "[1]"])
def test_calculator_refuses_anything_but_arithmetic(expression: str) -> None:
    with pytest.raises(ToolFailure) as refused:
        calculate(expression)
    assert refused.value.code == "invalid_arguments"


async def test_tickets_are_per_tenant_and_refunds_accumulate() -> None:
    store = MemoryTicketStore()
    await seed_demo_tickets(store, "acme")
    tools = Builtins(tickets=store)
    assert (await tools.run("ticket_lookup", {"ticket_id": "T-1001"}, "acme", idempotency_key="k"))["status"] == "open"
    with pytest.raises(ToolFailure) as missing:
        await tools.run("ticket_lookup", {"ticket_id": "T-1001"}, "globex", idempotency_key="k")
    assert missing.value.code == "not_found"
    first = await tools.run("issue_refund", {"ticket_id": "T-1001", "amount": 40}, "acme", idempotency_key="k1")
    assert first["refund_id"] == "rf_1_T-1001"
    await tools.run("ticket_update", {"ticket_id": "T-1001", "status": "closed"}, "acme", idempotency_key="k2")
    ticket = await store.get("acme", "T-1001")
    assert ticket is not None and ticket["status"] == "closed" and len(ticket["refunds"]) == 1
    with pytest.raises(ToolFailure):
        await tools.run("ticket_update", {"ticket_id": "T-1001", "status": "vanished"}, "acme", idempotency_key="k")
