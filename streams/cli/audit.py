"""`tollway audit verify | export | tail`. Exit codes: 0 ok, 1 the log does not verify, 2 usage, 3 a service is down."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from schemas.errors import ConfigError
from streams.cli.common import parse_time_ns
from streams.settings import get_settings

console = Console(stderr=True)
audit_app = typer.Typer(help="The tamper-evident audit log: verify, export, tail.", no_args_is_help=True)

CSV_FIELDS = ("request_id", "tenant", "status", "code", "outcome_stage", "principal_key_id", "created_at_ns",
              "audited_at_ns", "policy_version", "cache_outcome", "cache_similarity", "model", "region",
              "input_tokens", "output_tokens", "cost_micros", "saved_micros", "prompt_sha256", "answer_sha256")


def _dir(directory: Path | None) -> Path:
    from streams.stages.audit import audit_dir

    return directory or audit_dir(get_settings())


@audit_app.command()
def verify(
    directory: Annotated[Path | None, typer.Option("--dir", help="chains directory (default: "
                                                   "<state_dir>/audit/<topic prefix>)")] = None,
    topic: Annotated[bool, typer.Option("--topic", help="verify the topic copy (<prefix>.audit.log with "
                                        "<prefix>.audit.checkpoints); with --dir, also the files against it")] = False,
    max_unsigned_records: Annotated[int | None, typer.Option(
        min=0, help="records allowed between checkpoints and after the last one (default: "
                    "TOLLWAY_AUDIT_CHECKPOINT_RECORDS + TOLLWAY_BATCH_MAX_RECORDS)")] = None,
    max_unsigned_seconds: Annotated[float | None, typer.Option(
        min=0, help="age allowed for the checkpoint before an unsigned tail (default: 3 × "
                    "TOLLWAY_AUDIT_CHECKPOINT_INTERVAL_S)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable report")] = False,
) -> None:
    """Check every chain link and signed checkpoint, that no checkpoint is missing and the unsigned tail is short;
    report the first bad index per chain. Exit 1 when anything does not verify."""
    import time

    from streams.cli.audit_topics import read_audit_topics
    from streams.cli.common import run_async
    from streams.stages.audit import signer_from_settings
    from workers.audit.sink import chain_dirs
    from workers.audit.verify import TailLimits, VerifyReport, verify_dir, verify_topic
    from workers.audit.witness import collect_witness

    settings = get_settings()
    limits = TailLimits.for_writer(checkpoint_records=settings.audit_checkpoint_records,
                                   checkpoint_interval_s=settings.audit_checkpoint_interval_s,
                                   batch_max_records=settings.batch_max_records)
    if max_unsigned_records is not None:
        limits = replace(limits, max_records=max_unsigned_records)
    if max_unsigned_seconds is not None:
        limits = replace(limits, max_age_ns=int(max_unsigned_seconds * 1e9))
    root = _dir(directory)
    check_files = directory is not None or not topic
    if check_files and not root.is_dir():
        console.print(f"[red]no audit log at {root}[/]")
        raise typer.Exit(2)
    if directory is not None and not chain_dirs(root):  # a wrong level (e.g. <state>/audit) "verified" 0 records
        console.print(f"[red]no audit chain under {root}[/]: --dir is a chains directory, "
                      "<state_dir>/audit/<topic prefix>, holding chain-*/")
        raise typer.Exit(2)
    signer = signer_from_settings(settings, verify_only=True)
    started = time.perf_counter()
    reports: dict[str, VerifyReport] = {}
    witness = None
    if topic:
        witness_values, audit_records = run_async(read_audit_topics(settings))
        witness = collect_witness(witness_values, signer)
        reports["topic"] = verify_topic(audit_records, witness, limits=limits)
    if check_files:
        reports["files vs topic" if witness else "files"] = verify_dir(
            root, signer, limits=limits, witness=witness.chains if witness else None)
    elapsed = time.perf_counter() - started
    ok = all(report.ok for report in reports.values())
    if as_json:
        sys.stdout.write(orjson.dumps({
            "ok": ok, "seconds": round(elapsed, 3),
            "records": max(report.records for report in reports.values()),
            "sources": {source: _report_json(report) for source, report in reports.items()},
        }).decode() + "\n")
    else:
        _print_reports(reports, root if check_files else None)
        records = max(report.records for report in reports.values())
        rate = records / elapsed if elapsed > 0 else 0.0
        console.print(f"{records} records in {elapsed:.2f} s ({rate:,.0f} records/s): "
                      + ("[green]verified[/]" if ok else "[red]does not verify[/]"))
    if not ok:
        raise typer.Exit(1)


def _report_json(report: Any) -> dict[str, Any]:
    return {"ok": report.ok, "records": report.records, "problems": report.problems,
            "chains": [{"chain": c.chain_id, "ok": c.ok, "records": c.records, "checkpoints": c.checkpoints,
                        "first_bad_index": c.first_bad_index, "bad_checkpoint": c.bad_checkpoint,
                        "reason": c.reason, "duplicate_keys": c.duplicate_keys[:100]} for c in report.chains]}


def _print_reports(reports: dict[str, Any], root: Path | None) -> None:
    table = Table(title=f"audit log {root}" if root else "audit log (topics)")
    for column in ("source", "chain", "records", "checkpoints", "status", "first bad index", "reason"):
        table.add_column(column)
    for source, report in reports.items():
        for c in report.chains:
            reason = c.reason or (f"{len(c.duplicate_keys)} duplicate request(s)" if c.duplicate_keys else "")
            table.add_row(source, c.chain_id, str(c.records), str(c.checkpoints),
                          "[green]ok[/]" if c.ok else "[red]BAD[/]",
                          "" if c.first_bad_index is None else str(c.first_bad_index), reason)
        for problem in report.problems:
            table.add_row(source, "", "", "", "[red]BAD[/]", "", problem)
        if not report.chains and not report.problems:
            table.add_row(source, "", "0", "0", "[green]ok[/]", "", "no chain")
    Console().print(table)


def iter_records(root: Path) -> Any:
    from workers.audit.chain import parse_line
    from workers.audit.sink import chain_dirs, segments

    for chain_dir in chain_dirs(root):
        for segment in segments(chain_dir):
            for line in segment.read_bytes().splitlines():
                try:
                    _, _, record = parse_line(line)
                    yield orjson.loads(record)
                except (ValueError, orjson.JSONDecodeError):
                    continue  # `audit verify` is where a damaged line is reported


@audit_app.command()
def export(
    tenant: Annotated[str, typer.Option(help="tenant whose records to export")],
    since: Annotated[str | None, typer.Option(help="from this time (ISO-8601 or epoch s), by audit time")] = None,
    until: Annotated[str | None, typer.Option(help="before this time (ISO-8601 or epoch s)")] = None,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV with the main columns instead of JSONL")] = False,
    directory: Annotated[Path | None, typer.Option("--dir", help="chains directory")] = None,
    out: Annotated[Path | None, typer.Option(help="write here instead of stdout")] = None,
) -> None:
    """Write one tenant's audit records (JSONL, or CSV) for a time window, ordered by audit time."""
    try:
        since_ns, until_ns = parse_time_ns(since), parse_time_ns(until)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from exc
    rows = [r for r in iter_records(_dir(directory)) if r.get("tenant") == tenant
            and (since_ns is None or r["audited_at_ns"] >= since_ns)
            and (until_ns is None or r["audited_at_ns"] < until_ns)]
    rows.sort(key=lambda r: r["audited_at_ns"])
    stream = out.open("w", newline="") if out else sys.stdout
    try:
        if as_csv:
            writer = csv.DictWriter(stream, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                usage = row.get("usage") or {}
                writer.writerow({**row, "input_tokens": usage.get("input_tokens", 0),
                                 "output_tokens": usage.get("output_tokens", 0)})
        else:
            for row in rows:
                stream.write(orjson.dumps(row).decode() + "\n")
    finally:
        if out:
            stream.close()
    console.print(f"exported {len(rows)} record(s) for tenant {tenant}")


@audit_app.command()
def tail(
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="start at the oldest record")] = False,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
) -> None:
    """Follow the audit topic live (its own reader, no consumer group: it never disturbs the audit stage)."""
    from streams.runtime.connections import new_consumer
    from streams.runtime.topics import topology

    settings = get_settings()

    async def follow() -> None:
        consumer = new_consumer(settings, topology(settings).audit_log, role="auditor",
                                auto_offset_reset="earliest" if from_beginning else "latest")
        await consumer.start()
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    for record in records:
                        row = orjson.loads(record.value)
                        if tenant is None or row.get("tenant") == tenant:
                            sys.stdout.write(record.value.decode() + "\n")
                sys.stdout.flush()
        finally:
            await consumer.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(follow())


def register(app: typer.Typer) -> None:
    """Add this area's commands to the main `tollway` app."""
    app.add_typer(audit_app, name="audit")
