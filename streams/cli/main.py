"""The ``tollway`` command. Exit codes: 0 ok, 1 the request failed or was denied, 2 usage, 3 a service is down."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.markup import escape

from schemas.envelope import Message, Status, Tier
from schemas.response import Response
from streams.cli.common import EXIT_FAILED, EXIT_USAGE, console, print_response, run_async, setup_logging
from streams.settings import get_settings

app = typer.Typer(help="tollway: governed LLM inference on Kafka.", no_args_is_help=True,
                  pretty_exceptions_enable=False)


@app.command()
def worker(stages: Annotated[list[str], typer.Argument(
        help="stage names, 'all', or stages joined with '+' to run them co-located as one consumer group "
             "(e.g. retrieval+policy+cache; 'all+' is the whole route as one group)")]) -> None:
    """Run one or more stages in this process (each stage is its own consumer group; a+b+c is one co-located group
    handing requests between its stages in memory: fewer durable hops, less isolation — see ARCHITECTURE.md)."""
    from streams.runtime.worker_process import run_workers
    from streams.stages.registry import resolve_units

    settings = get_settings()
    setup_logging(settings.log_level)
    run_async(run_workers(settings, resolve_units(stages)))


@app.command()
def topics() -> None:
    """Create every tollway topic that is missing (workers also do this on start)."""
    from streams.runtime.topics import ensure_topics

    created = run_async(ensure_topics(get_settings()))
    console.print(f"created {len(created)} topic(s)" + (f": {', '.join(created)}" if created else ""))


@app.command()
def submit(
    prompt: Annotated[str | None, typer.Argument(help="the user prompt (or use --messages)")] = None,
    messages_file: Annotated[Path | None, typer.Option("--messages", help="JSON list (or JSONL) of chat messages "
                                                       "{role, content}")] = None,
    tenant: Annotated[str, typer.Option(help="tenant id")] = "acme",
    tier: Annotated[Tier, typer.Option(help="SLO tier")] = Tier.STANDARD,
    model: Annotated[str | None, typer.Option(help="catalog model, default: routed")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the response")] = 30.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the response as JSON")] = False,
    tool: Annotated[list[str] | None, typer.Option("--tool", help="offer this registered tool (repeatable); "
                                                   "default: all of the tenant's")] = None,
    tools_file: Annotated[Path | None, typer.Option("--tools", help="JSON list of tool definitions (OpenAI's "
                                                    "shape): tools the caller runs")] = None,
    tools_mode: Annotated[str, typer.Option(help="who runs tool calls: auto, server or client")] = "auto",
    tool_choice: Annotated[str, typer.Option(help="auto, none, required or a tool's name")] = "auto",
) -> None:
    """Publish one request, wait for its response, print the answer and the per-stage latency breakdown.

    Tools: registered tools run in the pipeline and the answer comes back (server-executed); with --tools the model
    may instead answer with tool calls for you to run (client-executed, printed with exit code 0) — send their
    results back with --messages (assistant turn with tool_calls, then role "tool" messages with tool_call_id)."""
    from streams.clients.sdk import TollwayClient
    from streams.clients.tools import as_function_tools, check_conversation

    settings = get_settings()
    conversation = _conversation(prompt, messages_file)
    if tools_mode not in ("auto", "server", "client"):
        console.print("[red]--tools-mode must be auto, server or client[/]")
        raise typer.Exit(EXIT_USAGE)
    try:
        definitions = as_function_tools([*(tool or []), *_read_json_list(tools_file)])
        _check_tool_choice([d.name for d in definitions], tool_choice)
        check_conversation(conversation)
    except (ValueError, ValidationError) as exc:
        console.print(f"[red]bad tool definitions or tool messages:[/] {exc}")
        raise typer.Exit(EXIT_USAGE) from exc
    # What the HTTP ingress answers with a 400 unknown_tool: tollway cannot run a tool the tenant has not registered
    # (--tool names one; --tools-mode server forces it). Without the check the request went out offering nothing.
    server_named = [*(tool or []), *([d.name for d in definitions] if tools_mode == "server" else [])]
    if server_named:
        registered = run_async(_registered_tools(tenant))
        unknown = [name for name in dict.fromkeys(server_named) if registered is not None and name not in registered]
        if unknown:
            console.print(f"[red]{', '.join(map(repr, unknown))} is not a registered tool of tenant {tenant!r}[/] "
                          f"(registered: {', '.join(registered or []) or 'none'}); tollway cannot run it — send its "
                          "definition with --tools to run it yourself (client-executed)", highlight=False)
            raise typer.Exit(EXIT_USAGE)

    async def go() -> Response:
        async with TollwayClient(settings, tenant=tenant, tier=tier) as client:
            return await client.complete(conversation, timeout=timeout, model=model, tools=definitions,
                                         tools_mode=tools_mode, tool_choice=tool_choice)

    try:
        response = run_async(go())
    except ValueError as exc:  # a conversation whose tool messages answer no call
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(EXIT_USAGE) from exc
    except TimeoutError as exc:
        console.print(f"[red]no response within {timeout:.0f} s[/] — are the workers running? (`tollway worker all`)")
        raise typer.Exit(EXIT_FAILED) from exc
    assert isinstance(response, Response)
    if as_json:
        sys.stdout.write(orjson.dumps(response.model_dump(mode="json"), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print_response(response)
    if response.status not in (Status.OK, Status.CACHE_HIT):
        raise typer.Exit(EXIT_FAILED)


async def _registered_tools(tenant: str) -> list[str] | None:
    """The tools tollway may run for ``tenant`` under the policy in force (None: no policy, nothing to check)."""
    from schemas.policy import PolicyDocument
    from streams.followers.policy import PolicyStore, load_policy_file
    from workers.tools.governance import offered_tools

    settings = get_settings()
    doc: PolicyDocument | None
    if settings.policy_file is not None:
        doc = load_policy_file(settings.policy_file)
    else:
        store = PolicyStore(settings)
        await store.start()
        await store.stop()
        doc = store.current()
    if doc is None:
        return None
    return offered_tools(doc, doc.tenant(tenant))


def _check_tool_choice(names: list[str], choice: str) -> None:
    """What the HTTP ingress answers with a 400: a tool defined twice, and a ``tool_choice`` that is neither auto,
    none, required nor one of the offered tools (without --tool/--tools any name: the tenant's tools are offered)."""
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"the tool {twice[0]!r} is defined twice")
    if choice in ("auto", "none", "required"):
        return
    if names and choice not in names:
        raise ValueError(f"--tool-choice {choice!r} is not one of the request's tools ({', '.join(names)})")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", choice):
        raise ValueError(f"--tool-choice must be auto, none, required or a tool's name, not {choice!r}")


def _read_json_list(path: Path | None) -> list[Any]:
    if path is None:
        return []
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError(f"{path} must hold a JSON list")
    return data


def _conversation(prompt: str | None, messages_file: Path | None) -> list[Message]:
    """The chat messages to send: the prompt as one user message, or a file of messages (then the prompt last);
    messages in OpenAI's shape (tool_calls with JSON-string arguments) are accepted."""
    from streams.clients.tools import message_from

    messages: list[Message] = []
    if messages_file is not None:
        try:
            raw = messages_file.read_bytes()
            data = orjson.loads(raw) if raw.lstrip().startswith(b"[") else [
                orjson.loads(line) for line in raw.splitlines() if line.strip()]
            messages = [message_from(m) for m in data]
        except (OSError, orjson.JSONDecodeError, ValidationError, KeyError, TypeError) as exc:
            console.print(f"[red]cannot read messages from {messages_file}:[/] {exc}")
            raise typer.Exit(EXIT_USAGE) from exc
    if prompt:
        messages.append(Message(role="user", content=prompt))
    if not messages:
        console.print("[red]nothing to send:[/] give a prompt or --messages FILE")
        raise typer.Exit(EXIT_USAGE)
    return messages


@app.command()
def demo(
    requests_file: Annotated[Path, typer.Option(help="JSONL of sample requests")] = Path("bench/samples.jsonl"),
) -> None:
    """Run every stage in-process, publish the bundled sample requests, print responses, latency and cost."""
    from streams.cli.demo import run_demo

    settings = get_settings()
    setup_logging("WARNING")
    # A topic created a moment ago answers "not leader" for a few hundred ms; the producer retries, quietly here.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    run_async(run_demo(settings, requests_file, console))


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="directory for latency.png and latency.html")] = Path("reports"),
    responses_file: Annotated[Path | None, typer.Option("--responses", help="JSONL of responses instead of the "
                                                        "responses topic")] = None,
) -> None:
    """Render the per-stage latency waterfall (PNG) and percentile table (HTML) of a run's responses."""
    from schemas.errors import BadEvent
    from streams.cli.report import read_responses, write_report
    from streams.runtime.codec import decode_as
    from streams.runtime.topics import topology

    settings = get_settings()
    if responses_file is not None:
        try:
            responses = [decode_as(line, Response) for line in responses_file.read_bytes().splitlines()
                         if line.strip()]
        except (OSError, BadEvent) as exc:
            console.print(f"[red]cannot read responses from {responses_file}:[/] {exc}")
            raise typer.Exit(EXIT_USAGE) from exc
    else:
        responses = run_async(read_responses(settings, topology(settings).responses))
    if not responses:
        console.print("no responses to report on")
        raise typer.Exit(EXIT_FAILED)
    png, page = write_report(responses, out)
    console.print(f"wrote {png} and {page} ({len(responses)} responses)")


@app.command("schemas")
def export_schemas(out: Annotated[Path, typer.Option(help="directory for the JSON Schema files")] =
                   Path("schemas/json")) -> None:
    """Export the JSON Schemas of every event for producers in other languages."""
    from schemas.export import export

    for path in export(out):
        console.print(f"wrote {path}")


def _register_areas() -> None:
    from streams.cli import audit as cli_audit
    from streams.cli import cache as cli_cache
    from streams.cli import index as cli_index
    from streams.cli import ingress as cli_ingress
    from streams.cli import ledger as cli_ledger
    from streams.cli import model as cli_model
    from streams.cli import policy as cli_policy
    from streams.cli import router as cli_router
    from streams.cli import tools as cli_tools

    for area in (cli_policy, cli_index, cli_model, cli_audit, cli_ledger, cli_ingress, cli_router, cli_cache,
                 cli_tools):
        area.register(app)


_register_areas()


def main(argv: Sequence[str] | None = None) -> None:
    """The ``tollway`` entry point. A bad ``TOLLWAY_*`` value or a service that is down, met before a command's
    coroutine runs (most commands read the settings first), is the one line `run_async` prints, not a traceback."""
    from schemas.errors import ConfigError, ServiceUnavailable
    from streams.cli.common import EXIT_UNAVAILABLE, err_console

    try:
        app(args=list(argv) if argv is not None else None)
    except ConfigError as exc:
        err_console.print(f"[red]configuration error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(EXIT_USAGE)
    except ServiceUnavailable as exc:
        err_console.print(f"[red]service unavailable:[/] {escape(str(exc))}  (start the stack with `make up`)",
                          soft_wrap=True)
        sys.exit(EXIT_UNAVAILABLE)


if __name__ == "__main__":
    main()
