"""Rewriting the audit log so the chain still links: each case must fail verification, at the right index.

The attacker edits the files, recomputes the hash chain, and deletes the signed checkpoints that would give them
away. The files alone still catch it (missing checkpoints, an unsigned tail too long or too old); the topic witness
(``<prefix>.audit.checkpoints`` with the records on ``<prefix>.audit.log``) pins it to the exact index.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from schemas.audit import Checkpoint
from workers.audit.chain import ChainState, HmacSigner
from workers.audit.sink import CHECKPOINTS, AuditLog, FileAuditSink, segments
from workers.audit.verify import TailLimits, VerifyReport, verify_dir, verify_topic
from workers.audit.witness import collect_witness
from workers.context import MemoryPublisher

SIGNER = HmacSigner(b"test-secret")
N = 60
LIMITS = TailLimits(max_records=10, max_age_ns=30 * 1_000_000_000)
NOW_NS = 1_000_000_000_000  # the log was written at 0..60 ns: every checkpoint is ~1000 s old


def record(i: int) -> bytes:
    return orjson.dumps({"dedup_key": f"req-{i}", "request_id": f"req-{i}", "n": i, "audited_at_ns": i})


class Written:
    """A 60-record chain signed every 10 records, and what reached the topics while it was written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.topic = MemoryPublisher()
        sink = FileAuditSink.lease(root, segment_records=25, fsync=False)
        self.dir = sink.dir
        audit_log = AuditLog(sink, SIGNER, checkpoint_every=10, witness=self.topic, witness_topic="w")
        for i in range(N):
            audit_log.append([(f"req-{i}", record(i))], now_ns=i)
            self.topic.publish("log", record(i), key=f"req-{i}".encode())
        audit_log.close(now_ns=N)

    def topic_values(self, topic: str) -> list[bytes]:
        return [value for name, _, value in self.topic.records if name == topic]

    def rechain(self, records: list[bytes]) -> None:
        """Replace the chain by ``records``, correctly linked and numbered (what an attacker with the files does)."""
        for seg in segments(self.dir):
            seg.unlink()
        state = ChainState(self.dir.name)
        (self.dir / "seg-000000000000.jsonl").write_bytes(b"".join(state.append(r) for r in records))

    def keep_checkpoints(self, keep: Callable[[int], bool]) -> None:
        path = self.dir / CHECKPOINTS
        lines = [line for line in path.read_bytes().splitlines()
                 if keep(Checkpoint.model_validate(orjson.loads(line)).tree_size)]
        path.write_bytes(b"".join(line + b"\n" for line in lines))

    def files(self) -> VerifyReport:
        return verify_dir(self.root, SIGNER, limits=LIMITS, now_ns=NOW_NS)

    def both(self) -> VerifyReport:
        witness = collect_witness(self.topic_values("w"), SIGNER)
        return verify_dir(self.root, SIGNER, limits=LIMITS, now_ns=NOW_NS, witness=witness.chains)

    def topic_copy(self, records: list[bytes] | None = None) -> VerifyReport:
        witness = collect_witness(self.topic_values("w"), SIGNER)
        return verify_topic(self.topic_values("log") if records is None else records, witness, limits=LIMITS,
                            now_ns=NOW_NS)


def bad(report: VerifyReport) -> tuple[int | None, str]:
    (chain,) = report.chains
    assert not report.ok
    return chain.first_bad_index, chain.reason


@pytest.fixture
def log(tmp_path: Path) -> Written:
    return Written(tmp_path)


def originals() -> list[bytes]:
    return [record(i) for i in range(N)]


def test_an_intact_log_verifies_on_disk_on_the_topic_and_against_each_other(log: Written) -> None:
    for report in (log.files(), log.both(), log.topic_copy()):
        assert report.ok, report
        assert report.records == N


def test_the_default_limits_pass_an_intact_log_verified_now(log: Written) -> None:
    assert verify_dir(log.root, SIGNER).ok


# ------------------------------------------------------------------ the cases: each passed `verify` before
def test_edit_rechain_and_delete_all_checkpoints(log: Written) -> None:
    log.rechain([record(-35) if i == 35 else r for i, r in enumerate(originals())])
    (log.dir / CHECKPOINTS).unlink()
    assert verify_dir(log.root, SIGNER).ok is False  # the defaults catch it too
    index, reason = bad(log.files())
    assert index == 0 and "no signed checkpoint" in reason
    assert bad(log.both())[0] == 35  # the topic's witness pins the edit


def test_edit_rechain_and_delete_only_the_checkpoints_covering_it(log: Written) -> None:
    log.rechain([record(-35) if i == 35 else r for i, r in enumerate(originals())])
    log.keep_checkpoints(lambda size: size <= 30)  # every later checkpoint covers record 35
    assert verify_dir(log.root, SIGNER).ok is False
    index, reason = bad(log.files())
    assert index == 30 and "unsigned tail" in reason
    assert bad(log.both())[0] == 35


def test_checkpoints_removed_from_the_middle_are_missing(log: Written) -> None:
    log.keep_checkpoints(lambda size: size not in (20, 30))
    index, reason = bad(log.files())
    assert index == 10 and "checkpoints missing" in reason
    assert log.both().ok  # the topic still holds them, and the records match


@pytest.mark.parametrize("cut", [35, 30])
def test_truncated_tail_with_its_later_checkpoints_dropped(log: Written, cut: int) -> None:
    log.rechain(originals()[:cut])
    log.keep_checkpoints(lambda size: size <= cut)
    if cut == 35:  # five unsigned records after a checkpoint long past
        index, reason = bad(log.files())
        assert index == 30 and "unsigned tail" in reason
        assert verify_dir(log.root, SIGNER).ok is False
    else:  # cut at a checkpoint: the files alone look like a chain that stopped; the topic goes on
        assert log.files().ok
    index, reason = bad(log.both())
    assert index == cut and "truncated" in reason


def test_forged_insert_is_found_at_its_own_index(log: Written) -> None:
    records = originals()
    records.insert(12, record(999))
    log.rechain(records[:N])
    index, _ = bad(log.files())
    assert index == 10  # the files alone: between the checkpoints at 10 and 20
    index, reason = bad(log.both())
    assert index == 12 and "differs from the topic" in reason
    log.keep_checkpoints(lambda size: size <= 10)  # and with the covering checkpoints gone
    assert bad(log.files())[0] == 10
    assert bad(log.both())[0] == 12


def test_reordered_records_are_found_at_their_index(log: Written) -> None:
    records = originals()
    records[40], records[41] = records[41], records[40]
    log.rechain(records)
    log.keep_checkpoints(lambda size: size <= 40)
    assert bad(log.files())[0] == 40
    assert verify_dir(log.root, SIGNER).ok is False
    index, reason = bad(log.both())
    assert index == 40 and "differs" in reason


# ------------------------------------------------------------------------------------------------- the topic copy
def test_a_record_deleted_or_edited_on_the_topic_is_found_at_its_index(log: Written) -> None:
    records = log.topic_values("log")
    assert bad(log.topic_copy(records[:17] + records[18:]))[0] == 17
    assert bad(log.topic_copy([*records[:17], record(-17), *records[18:]]))[0] == 17


def test_a_record_forged_onto_the_topic_is_found(log: Written) -> None:
    report = log.topic_copy([*log.topic_values("log"), record(1234)])
    assert not report.ok and "covered by no checkpoint" in report.problems[0]


def test_witness_messages_removed_from_the_topic_are_missing(log: Written) -> None:
    messages = log.topic_values("w")
    del messages[3]  # the checkpoint at 30, with the leaves [20, 30)
    witness = collect_witness(messages, SIGNER)
    index, reason = bad(verify_topic(log.topic_values("log"), witness, limits=LIMITS, now_ns=NOW_NS))
    assert index == 20 and "missing on the topic" in reason


def test_a_forged_witness_message_does_not_verify(log: Written) -> None:
    messages = log.topic_values("w")
    doc = orjson.loads(messages[2])
    doc["checkpoint"]["tree_size"] += 1
    messages[2] = orjson.dumps(doc)
    witness = collect_witness(messages, SIGNER)
    assert not verify_topic(log.topic_values("log"), witness, limits=LIMITS, now_ns=NOW_NS).ok


# ------------------------------------------------------------------------------------------------------- the writer
def test_restart_republishes_recent_checkpoints_and_signs_the_tail(tmp_path: Path) -> None:
    first = MemoryPublisher()
    sink = FileAuditSink.lease(tmp_path, fsync=False)
    audit_log = AuditLog(sink, SIGNER, checkpoint_every=10, witness=first, witness_topic="w")
    audit_log.append([(f"req-{i}", record(i)) for i in range(25)], now_ns=5)  # signs 25, leaves nothing unsigned
    audit_log.append([(f"req-{i}", record(i)) for i in range(25, 28)], now_ns=6)  # crash: 3 unsigned, not published
    sink.close()
    lost = first.records[-1:]  # the witness of the last checkpoint never reached the broker
    topic = MemoryPublisher(records=first.records[:-1])
    again = AuditLog(FileAuditSink.lease(tmp_path, fsync=False), SIGNER, checkpoint_every=10, witness=topic,
                     witness_topic="w", now_ns=7)
    assert again.size == 28 and lost[0] in topic.records
    witness = collect_witness([value for _, _, value in topic.records], SIGNER)
    report = verify_topic([record(i) for i in range(28)], witness, limits=TailLimits(max_records=10 + 25), now_ns=8)
    assert report.ok and report.records == 28, report


def test_a_checkpoint_beyond_the_records_stops_the_writer(tmp_path: Path) -> None:
    from schemas.errors import AuditLogCorrupt

    log = Written(tmp_path)
    log.rechain(originals()[:35])
    with pytest.raises(AuditLogCorrupt, match="truncated"):
        AuditLog(FileAuditSink.lease(tmp_path, fsync=False), SIGNER)


def test_long_leaf_runs_are_sliced_and_reassembled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.audit import witness as witness_module

    monkeypatch.setattr(witness_module, "MAX_LEAVES_PER_MESSAGE", 4)
    topic = MemoryPublisher()
    audit_log = AuditLog(FileAuditSink.lease(tmp_path, fsync=False), SIGNER, checkpoint_every=10, witness=topic,
                         witness_topic="w")
    audit_log.append([(f"req-{i}", record(i)) for i in range(10)], now_ns=1)
    keys = [key for _, key, _ in topic.records]
    assert len(keys) == 1 + 3 and len(set(keys)) == len(keys)  # the empty chain's, then 10 leaves in 4 + 4 + 2
    witness = collect_witness([value for _, _, value in reversed(topic.records)], SIGNER)
    report = verify_topic([record(i) for i in range(10)], witness, limits=LIMITS, now_ns=2)
    assert report.ok and report.records == 10, report
