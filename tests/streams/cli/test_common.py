from rich.console import Console

from schemas.envelope import Status
from schemas.response import HopSummary, Response
from streams.cli.common import agent_table


def test_a_client_executed_turn_shows_the_model_asking_for_tools() -> None:
    response = Response.model_validate({
        "request_id": "r1", "tenant": "acme", "status": Status.OK, "code": "tool_calls", "model": "nano-us",
        "created_at_ns": 0, "completed_at_ns": 1_000_000,
        "hops": [HopSummary(stage=s, queue_ms=1.0, service_ms=1.0) for s in ("retrieval", "policy", "model")],
        "requested_tool_calls": [{"id": "call_0_0", "name": "lookup_order", "arguments": {"order_id": "A-17"}}],
        "steps": [{"kind": "model", "step": 1, "name": "nano-us", "status": "ok", "cost_micros": 20}]})
    console = Console(width=200, record=True)
    console.print(agent_table(response))
    text = console.export_text()
    assert "asked for tools" in text and "answered" not in text
