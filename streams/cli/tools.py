"""`tollway approve ID`, `tollway deny ID`, `tollway approvals` (held tool calls) and `tollway tools mcp-server`
(registered by streams/cli/main.py)."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
import typer
from rich.table import Table

from schemas.approvals import ApprovalEvent
from streams.cli.common import EXIT_FAILED, console, run_async
from streams.settings import Settings, get_settings

tools_app = typer.Typer(help="Tools for agents: the demo MCP server.", no_args_is_help=True)


async def _approvals(settings: Settings) -> dict[str, ApprovalEvent]:
    from streams.followers.base import read_to_end
    from streams.runtime.codec import decode_as
    from streams.runtime.topics import topology

    current: dict[str, ApprovalEvent] = {}
    for record in await read_to_end(settings, topology(settings).tool_approvals, role="policy-admin"):
        if record.value is not None:
            event = decode_as(record.value, ApprovalEvent)
            if current.get(event.approval_id) is None or event.state != "pending":
                current[event.approval_id] = event
    return current


async def _decide(settings: Settings, approval_id: str, state: str, by: str, reason: str) -> ApprovalEvent:
    from streams.runtime.connections import new_producer, start
    from streams.runtime.topics import topology

    found = (await _approvals(settings)).get(approval_id)
    if found is None:
        console.print(f"[red]no held tool call with approval id {approval_id}[/red]")
        raise typer.Exit(EXIT_FAILED)
    if found.state != "pending":
        console.print(f"[red]approval {approval_id} was already {found.state} by {found.by or 'an operator'}[/red]")
        raise typer.Exit(EXIT_FAILED)
    decided = found.model_copy(update={"state": state, "by": by, "reason": reason, "at_ns": time.time_ns()})
    producer = new_producer(settings, role="policy-admin", client_id=f"{settings.worker_id}-approve")
    await start(producer, settings, "approvals producer")
    try:
        await (await producer.send(topology(settings).tool_approvals, decided.model_dump_json().encode(),
                                   key=approval_id.encode()))
    finally:
        await producer.stop()
    return decided


def _decision_command(state: str):  # type: ignore[no-untyped-def]
    def command(approval_id: Annotated[str, typer.Argument(help="the id `tollway approvals` lists (ap_…)")],
                by: Annotated[str, typer.Option(help="who decides (recorded with the decision)")] = "operator",
                reason: Annotated[str, typer.Option(help="why (the model reads it when denied)")] = "") -> None:
        decided = run_async(_decide(get_settings(), approval_id, state, by, reason))
        console.print(f"{decided.approval_id} {state}: {decided.tool} for tenant {decided.tenant} "
                      f"(request {decided.request_id})")
    command.__doc__ = f"{'Approve' if state == 'approved' else 'Deny'} a held tool call."
    return command


def approvals(json_out: Annotated[bool, typer.Option("--json", help="JSON lines")] = False,
              every: Annotated[bool, typer.Option("--all", help="decided ones too")] = False) -> None:
    """The tool calls waiting for an operator's decision (`tollway approve ID` / `tollway deny ID`)."""
    events = [e for e in run_async(_approvals(get_settings())).values() if every or e.state == "pending"]
    if json_out:
        for event in events:
            print(event.model_dump_json())
        return
    table = Table("approval id", "state", "tenant", "tool", "arguments", "request", "waits until")
    for e in events:
        until = time.strftime("%H:%M:%S", time.gmtime(e.deadline_ns / 1e9)) if e.deadline_ns else "-"
        table.add_row(e.approval_id, e.state, e.tenant, e.tool, orjson.dumps(e.arguments).decode()[:80],
                      e.request_id, until)
    console.print(table)


@tools_app.command("mcp-server")
def mcp_server(transport: Annotated[str, typer.Option(help="stdio or streamable-http")] = "stdio",
               port: Annotated[int, typer.Option(help="streamable-http: the loopback port")] = 8765) -> None:
    """Run the demo MCP server (calculator, search over the tenant's index, tickets over Redis)."""
    from workers.tools.mcp_server import main

    main(["--transport", transport, "--port", str(port)])


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
    app.command("approve")(_decision_command("approved"))
    app.command("deny")(_decision_command("denied"))
    app.command("approvals")(approvals)
    app.add_typer(tools_app, name="tools")
