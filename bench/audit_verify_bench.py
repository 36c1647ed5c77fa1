"""Verify speed of the audit log: writes N realistic records (default 100k) to a temporary chain, then times
``verify_dir`` over it. Usage: ``.venv/bin/python bench/audit_verify_bench.py [N]``."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from schemas.audit import AuditHop, AuditRecord
from schemas.envelope import Status, Usage
from workers.audit.chain import HmacSigner
from workers.audit.record import encode_record, sha256_hex
from workers.audit.sink import AuditLog, FileAuditSink
from workers.audit.verify import verify_dir


def make_record(i: int) -> bytes:
    hops = [AuditHop(stage=s, worker_id="bench-1", produced_at_ns=i, started_at_ns=i + 1, finished_at_ns=i + 2,
                     queue_ms=0.5, service_ms=1.25) for s in ("retrieval", "policy", "cache", "model", "postprocess")]
    record = AuditRecord(request_id=f"req-{i:08d}", dedup_key=f"req-{i:08d}", tenant=f"tenant-{i % 17}",
                         principal_key_id="key-abc", status=Status.OK, outcome_stage="postprocess", tier="standard",
                         created_at_ns=1_700_000_000_000_000_000 + i, audited_at_ns=1_700_000_000_100_000_000 + i,
                         hops=hops, policy_version="v12", policy_decisions=["allow"], retrieval_doc_ids=["d1", "d2"],
                         cache_outcome="miss", model="small-1", region="eu", usage=Usage(input_tokens=120,
                         output_tokens=40), cost_micros=310, prompt_sha256=sha256_hex(f"p{i}"),
                         answer_sha256=sha256_hex(f"a{i}"))
    return encode_record(record)


def main(n: int) -> None:
    signer = HmacSigner(b"bench-secret")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        audit_log = AuditLog(FileAuditSink.lease(root, fsync=False), signer, checkpoint_every=1000)
        batch: list[tuple[str, bytes]] = []
        for i in range(n):
            batch.append((f"req-{i:08d}", make_record(i)))
            if len(batch) == 500:
                audit_log.append(batch, now_ns=i)
                batch = []
        audit_log.append(batch, now_ns=n)
        audit_log.close(now_ns=n)
        written = time.perf_counter() - started
        size = sum(p.stat().st_size for p in root.rglob("*.jsonl"))
        started, cpu_started = time.perf_counter(), time.process_time()
        report = verify_dir(root, signer)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        assert report.ok and report.records == n, report
        print(f"{n} records, {size / 1e6:.1f} MB, {report.chains[0].checkpoints} checkpoints; "
              f"write {n / written:,.0f} records/s; verify {elapsed:.2f} s wall = {n / elapsed:,.0f} records/s "
              f"({n / cpu:,.0f} records per CPU-second)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
