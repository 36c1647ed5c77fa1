"""`tollway cache spaces|reembed`: the semantic cache's vector spaces, and moving entries to a new embedder.

Each embedder (model, version, dimension, weights hash) writes its own semantic log, so after a model change the
new model starts with an empty semantic index (exact hits go on). `tollway cache reembed --from OLD_SPACE` embeds
the old log's live prompts with the configured embedder; `tollway cache spaces` shows which spaces hold entries.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.progress import Progress, TaskID
from rich.table import Table

from schemas.errors import BackendError, ServiceUnavailable
from streams.cli.common import run_async

console = Console()
cache_app = typer.Typer(help="The semantic cache: vector spaces and re-embedding after a model change.",
                        no_args_is_help=True)


@cache_app.command("spaces")
def spaces(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the embedders' vector spaces present in Redis (tenants, records) and the one now configured."""
    from streams.runtime.connections import redis_client
    from streams.settings import get_settings
    from streams.stages.embedders import open_embedder
    from workers.cache.store import vector_space

    settings = get_settings()

    async def go() -> tuple[str, list[dict[str, object]]]:
        client = redis_client(settings, timeout_ms=5_000)
        try:
            async with open_embedder(settings) as embedder:
                current = vector_space(embedder)
            prefix = f"{settings.topic_prefix}:cache:"
            found: dict[str, dict[str, int]] = {}
            async for raw in client.scan_iter(match=f"{prefix}*:log:*", count=1000):
                name = raw.decode() if isinstance(raw, bytes) else str(raw)
                space = name.rsplit(":log:", 1)[1]
                row = found.setdefault(space, {"tenants": 0, "records": 0})
                row["tenants"] += 1
                row["records"] += int(await client.xlen(name))
        except OSError as exc:
            raise ServiceUnavailable(f"redis at {settings.redis_url}: {exc}") from exc
        finally:
            await client.aclose()
        return current, [{"space": s, **v, "current": s == current} for s, v in sorted(found.items())]

    current, rows = run_async(go())
    if as_json:
        sys.stdout.write(orjson.dumps({"current": current, "spaces": rows}).decode() + "\n")
        return
    table = Table(title=f"semantic cache vector spaces (configured: {current})")
    for col in ("space", "tenants", "records", "current"):
        table.add_column(col)
    for row in rows:
        table.add_row(str(row["space"]), str(row["tenants"]), str(row["records"]), "yes" if row["current"] else "")
    console.print(table)


@cache_app.command("reembed")
def reembed_cmd(
    source: Annotated[str, typer.Option("--from", help="the old vector space (as `tollway cache spaces` lists)")],
    tenant: Annotated[list[str] | None, typer.Option(help="only these tenants (repeat); default: all")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Embed the live prompts of an old vector space with the configured embedder, so semantic hits come back."""
    from streams.runtime.connections import redis_client
    from streams.settings import get_settings
    from streams.stages.embedders import open_embedder
    from workers.cache.reembed import ReembedResult, reembed
    from workers.cache.store import RedisCacheStore, vector_space

    settings = get_settings()

    async def go() -> tuple[str, list[ReembedResult]]:
        client = redis_client(settings, timeout_ms=5_000)
        try:
            async with open_embedder(settings) as embedder:
                target_space = vector_space(embedder)
                if target_space == source:
                    raise typer.BadParameter(f"{source} is the configured embedder's own space; nothing to do")
                old = RedisCacheStore(client, namespace=settings.topic_prefix, vectors=source)
                new = RedisCacheStore(client, namespace=settings.topic_prefix, vectors=target_space)
                tenants = tenant or await old.tenants()
                results = []
                with Progress(console=console, transient=True, disable=as_json) as progress:
                    for name in tenants:
                        task = progress.add_task(f"{name}", total=None)

                        def advance(count: int, task: TaskID = task) -> None:
                            progress.advance(task, count)

                        results.append(await reembed(old, new, embedder, name, now_ms=time.time_ns() // 1_000_000,
                                                     progress=advance))
                return target_space, results
        except (BackendError, OSError) as exc:
            raise ServiceUnavailable(f"redis at {settings.redis_url}: {exc}") from exc
        finally:
            await client.aclose()

    target_space, results = run_async(go())
    if as_json:
        sys.stdout.write(orjson.dumps({"from": source, "to": target_space,
                                       "tenants": [r.__dict__ for r in results]}).decode() + "\n")
        return
    table = Table(title=f"re-embedded {source} → {target_space}")
    for col in ("tenant", "read", "expired", "already there", "written"):
        table.add_column(col)
    for r in results:
        table.add_row(r.tenant, str(r.read), str(r.expired), str(r.present), str(r.written))
    console.print(table)
    if not results:
        console.print(f"[yellow]no semantic log in space {source}[/] (see `tollway cache spaces`)")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
    app.add_typer(cache_app, name="cache")
