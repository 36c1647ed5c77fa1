"""`tollway index add|ls|rm`: the per-tenant retrieval corpus on the compacted index topic."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from streams.cli.common import run_async

if TYPE_CHECKING:
    from schemas.index import IndexChunkEvent

console = Console()
T = TypeVar("T")
index_app = typer.Typer(help="The retrieval index: add, list and remove documents per tenant.", no_args_is_help=True)


def _files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in {".md", ".txt", ".markdown"})
        elif path.is_file():
            found.append(path)
        else:
            console.print(f"[red]no such file or directory:[/] {path}")
            raise typer.Exit(2)
    return found


def _chunks(files: list[Path], *, tenant: str, labels: list[str], region: str | None) -> list[IndexChunkEvent]:
    """Every file's chunks, read before anything is published: a file that is not UTF-8 text, or two files with the
    same name (a document's id is its file name, so the second would silently replace the first), is a usage error."""
    from streams.followers.index import chunk_file

    seen: dict[str, Path] = {}
    for path in files:
        if path.name in seen:
            console.print(f"[red]two documents named {path.name}:[/] {seen[path.name]} and {path} (a document's id "
                          "is its file name: rename one)")
            raise typer.Exit(2)
        seen[path.name] = path
    chunks: list[IndexChunkEvent] = []
    for path in files:
        try:
            chunks += chunk_file(path, tenant=tenant, labels=labels, region=region)
        except (OSError, UnicodeDecodeError) as exc:
            console.print(f"[red]cannot index {path}:[/] not readable UTF-8 text ({exc})")
            raise typer.Exit(2) from exc
    return chunks


@index_app.command("add")
def add(
    paths: Annotated[list[Path], typer.Argument(help="markdown/text files or directories")],
    tenant: Annotated[str, typer.Option(help="tenant the documents belong to")],
    label: Annotated[list[str] | None, typer.Option(help="ACL label (repeat); only principals holding one see it")]
    = None,
    region: Annotated[str | None, typer.Option(help="residency region of these documents")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Chunk the files and publish the chunks (replacing earlier versions of the same documents)."""
    from streams.followers.index import publish, read_index
    from streams.runtime.topics import ensure_topics
    from streams.settings import get_settings

    settings = get_settings()
    files = _files(paths)
    chunks = _chunks(files, tenant=tenant, labels=label or [], region=region)

    async def go() -> tuple[int, int]:
        await ensure_topics(settings)
        docs = {c.doc_id for c in chunks}
        new_ids = {c.chunk_id for c in chunks}
        existing = await read_index(settings)
        stale = [(e.tenant, e.chunk_id) for e in existing.values()
                 if e.tenant == tenant and e.doc_id in docs and e.chunk_id not in new_ids]
        await publish(settings, chunks, stale)
        return len(chunks), len(stale)

    published, removed = run_async(go())
    if as_json:
        sys.stdout.write(orjson.dumps({"tenant": tenant, "files": len(files), "chunks": published,
                                       "stale_removed": removed}).decode() + "\n")
    else:
        console.print(f"indexed {len(files)} file(s) for [b]{tenant}[/]: {published} chunk(s)"
                      + (f", {removed} stale chunk(s) removed" if removed else ""))


@index_app.command("ls")
def ls(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List indexed documents per tenant with their chunk counts, labels and region."""
    from streams.followers.index import read_index
    from streams.settings import get_settings

    current = run_async(read_index(get_settings()))
    docs: dict[tuple[str, str], dict[str, object]] = {}
    for event in current.values():
        if tenant and event.tenant != tenant:
            continue
        row = docs.setdefault((event.tenant, event.doc_id), {"tenant": event.tenant, "doc_id": event.doc_id,
                                                             "chunks": 0, "labels": event.labels,
                                                             "region": event.region, "source": event.source})
        row["chunks"] = int(row["chunks"]) + 1  # type: ignore[call-overload]
    rows = [docs[k] for k in sorted(docs)]
    if as_json:
        sys.stdout.write(orjson.dumps(rows).decode() + "\n")
        return
    table = Table(title="retrieval index")
    for col in ("tenant", "doc_id", "chunks", "labels", "region", "source"):
        table.add_column(col)
    for row in rows:
        table.add_row(str(row["tenant"]), str(row["doc_id"]), str(row["chunks"]),
                      ",".join(row["labels"]) or "-", str(row["region"] or "-"), str(row["source"]))  # type: ignore[arg-type]
    console.print(table)


@index_app.command("rm")
def rm(
    doc_ids: Annotated[list[str], typer.Argument(help="document ids (as `index ls` shows them)")],
    tenant: Annotated[str, typer.Option(help="tenant the documents belong to")],
) -> None:
    """Remove documents (tombstones every chunk; compaction forgets them)."""
    from streams.followers.index import publish, read_index
    from streams.settings import get_settings

    settings = get_settings()

    async def go() -> int:
        current = await read_index(settings)
        doomed = [(e.tenant, e.chunk_id) for e in current.values() if e.tenant == tenant and e.doc_id in doc_ids]
        await publish(settings, [], doomed)
        return len(doomed)

    removed = run_async(go())
    console.print(f"removed {removed} chunk(s) of {len(doc_ids)} document(s) for [b]{tenant}[/]")
    if removed == 0:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
    app.add_typer(index_app, name="index")
