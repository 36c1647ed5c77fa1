"""`tollway audit verify`: exit 0 on an intact log, 1 with a clear reason on a tampered one, 3 when Kafka is away."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from streams.cli.main import app
from streams.settings import get_settings
from streams.stages.audit import signer_from_settings
from workers.audit.chain import ChainState
from workers.audit.sink import CHECKPOINTS, AuditLog, FileAuditSink, segments


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def write_log(root: Path, n: int = 40) -> Path:
    sink = FileAuditSink.lease(root, fsync=False)
    audit_log = AuditLog(sink, signer_from_settings(get_settings()), checkpoint_every=10, now_ns=time.time_ns())
    for i in range(n):
        record = orjson.dumps({"dedup_key": f"req-{i}", "request_id": f"req-{i}", "audited_at_ns": time.time_ns()})
        audit_log.append([(f"req-{i}", record)], now_ns=time.time_ns())
    audit_log.close(now_ns=time.time_ns())
    return sink.dir


def verify(*args: str) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(app, ["audit", "verify", "--json", *args])
    return result.exit_code, orjson.loads(result.stdout) if result.stdout.strip() else {}


def test_an_intact_log_verifies(tmp_path: Path) -> None:
    write_log(tmp_path)
    code, report = verify("--dir", str(tmp_path))
    assert code == 0 and report["ok"] and report["records"] == 40


def test_a_rechained_log_without_its_checkpoints_exits_1(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path)
    lines = [line for seg in segments(chain_dir) for line in seg.read_bytes().splitlines()]
    state = ChainState(chain_dir.name)
    records = [line[line.index(b'"record":') + 9:-1] for line in lines]
    records[7] = records[7].replace(b"req-7", b"req-X")
    for seg in segments(chain_dir):
        seg.unlink()
    (chain_dir / "seg-000000000000.jsonl").write_bytes(b"".join(state.append(r) for r in records))
    (chain_dir / CHECKPOINTS).unlink()
    code, report = verify("--dir", str(tmp_path))
    assert code == 1 and not report["ok"]
    (chain,) = report["sources"]["files"]["chains"]  # type: ignore[index]
    assert chain["first_bad_index"] == 0 and "no signed checkpoint" in chain["reason"]


def test_the_unsigned_tail_limit_is_an_option(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path)
    path = chain_dir / CHECKPOINTS
    path.write_bytes(b"".join(line + b"\n" for line in path.read_bytes().splitlines()[:-2]))  # drop 30 and 40
    assert verify("--dir", str(tmp_path))[0] == 0  # 20 fresh records: within the defaults (1500 records, 30 s)
    code, report = verify("--dir", str(tmp_path), "--max-unsigned-records", "15")
    assert code == 1 and "unsigned tail" in report["sources"]["files"]["chains"][0]["reason"]  # type: ignore[index]


def test_topic_verify_without_kafka_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLLWAY_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    write_log(tmp_path)
    assert CliRunner().invoke(app, ["audit", "verify", "--topic"]).exit_code == 3


def test_a_dir_holding_no_chain_is_a_usage_error_not_verified(tmp_path: Path) -> None:
    write_log(tmp_path / "audit" / "tollway")
    result = CliRunner().invoke(app, ["audit", "verify", "--dir", str(tmp_path / "audit")])  # one level too high
    assert result.exit_code == 2 and "no audit chain" in result.output, result.output
    assert verify("--dir", str(tmp_path / "audit" / "tollway"))[0] == 0
