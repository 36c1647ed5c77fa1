"""The hash chain, the Merkle root and the verifier: every kind of tampering is found at the right index."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from schemas.audit import Checkpoint
from workers.audit.chain import (
    ChainState,
    Ed25519Signer,
    HmacSigner,
    MerkleAccumulator,
    leaf_hash,
    merkle_root,
    node_hash,
    parse_line,
    sign_checkpoint,
)
from workers.audit.sink import CHECKPOINTS, AuditLog, FileAuditSink, segments
from workers.audit.verify import verify_dir

SIGNER = HmacSigner(b"test-secret")


def record(i: int) -> bytes:
    return orjson.dumps({"dedup_key": f"req-{i}", "request_id": f"req-{i}", "n": i})


def write_log(root: Path, n: int, *, checkpoint_every: int = 10, segment_records: int = 25) -> Path:
    sink = FileAuditSink.lease(root, segment_records=segment_records, fsync=False)
    audit_log = AuditLog(sink, SIGNER, checkpoint_every=checkpoint_every)
    for i in range(n):
        audit_log.append([(f"req-{i}", record(i))], now_ns=i)
    audit_log.close(now_ns=n)
    return sink.dir


def all_lines(chain_dir: Path) -> list[tuple[Path, int]]:
    """(segment, line number) of every record line in chain order."""
    return [(seg, k) for seg in segments(chain_dir) for k in range(len(seg.read_bytes().splitlines()))]


def edit_lines(seg: Path, edit: object) -> None:
    lines = seg.read_bytes().splitlines(keepends=True)
    edit(lines)  # type: ignore[operator]
    seg.write_bytes(b"".join(lines))


def first_bad(root: Path) -> tuple[int | None, int | None, str]:
    (chain,) = verify_dir(root, SIGNER).chains
    return chain.first_bad_index, chain.bad_checkpoint, chain.reason


# ---------------------------------------------------------------------------------------------------------- merkle
@given(st.integers(min_value=0, max_value=70))
def test_incremental_merkle_root_matches_rfc6962_definition(n: int) -> None:
    leaves = [leaf_hash(b"%d" % i) for i in range(n)]
    acc = MerkleAccumulator()
    for leaf in leaves:
        acc.append(leaf)
    assert acc.root() == merkle_root(leaves)


def test_rfc6962_shape_for_three_leaves() -> None:
    a, b, c = (leaf_hash(x) for x in (b"a", b"b", b"c"))
    assert merkle_root([a, b, c]) == node_hash(node_hash(a, b), c)
    assert leaf_hash(b"a") != node_hash(b"", b"a"[:0]) and leaf_hash(b"")[:1] != b""


def test_line_round_trip_keeps_record_bytes_exactly() -> None:
    state = ChainState("chain-x")
    raw = b'{"dedup_key":"k","text":"a \\"quoted\\" },\\"record\\":"}'
    index, chain_hex, rec = parse_line(state.append(raw).rstrip(b"\n"))
    assert (index, chain_hex, rec) == (0, state.head.hex(), raw)


# ---------------------------------------------------------------------------------------------------------- verify
def test_intact_log_verifies(tmp_path: Path) -> None:
    write_log(tmp_path, 60)
    report = verify_dir(tmp_path, SIGNER)
    assert report.ok, report
    assert report.records == 60 and report.chains[0].checkpoints >= 6


@pytest.mark.parametrize("target", [0, 7, 24, 25, 59])
def test_flipped_byte_is_found_at_its_index(tmp_path: Path, target: int) -> None:
    chain_dir = write_log(tmp_path, 60)
    seg, k = all_lines(chain_dir)[target]
    for offset in (3, 30, 90, -3):  # index digits, chain hex, record body, record end
        original = seg.read_bytes()

        def flip(lines: list[bytes], at: int = offset) -> None:
            line = bytearray(lines[k])
            line[at if at >= 0 else len(line) + at] ^= 0x01
            lines[k] = bytes(line)

        edit_lines(seg, flip)
        assert first_bad(tmp_path)[0] == target, offset
        seg.write_bytes(original)


def test_deleted_record_is_found(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path, 60)
    seg, k = all_lines(chain_dir)[33]
    edit_lines(seg, lambda lines: lines.pop(k))
    assert first_bad(tmp_path)[0] == 33


def test_deleted_segment_is_found(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path, 60)
    segments(chain_dir)[1].unlink()
    assert first_bad(tmp_path)[0] == 25


def test_inserted_record_is_found(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path, 60)
    seg, k = all_lines(chain_dir)[12]
    forged = ChainState("chain-000")
    edit_lines(seg, lambda lines: lines.insert(k, forged.append(record(999)).replace(b'"i":0', b'"i":12')))
    assert first_bad(tmp_path)[0] == 12


def test_reordered_records_are_found(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path, 60)
    seg, k = all_lines(chain_dir)[40]

    def swap(lines: list[bytes]) -> None:
        lines[k], lines[k + 1] = lines[k + 1], lines[k]

    edit_lines(seg, swap)
    assert first_bad(tmp_path)[0] == 40


def test_truncated_tail_is_found_by_the_last_checkpoint(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path, 60, checkpoint_every=1000)  # only the closing checkpoint covers the tail
    last = segments(chain_dir)[-1]
    edit_lines(last, lambda lines: lines.__delitem__(slice(-3, None)))
    bad_index, bad_cp, reason = first_bad(tmp_path)
    assert (bad_index, bad_cp) == (57, 1)  # #0 is the empty chain's, signed when it was created
    assert "truncated" in reason


def test_partial_last_line_is_found(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path, 60)
    last = segments(chain_dir)[-1]
    last.write_bytes(last.read_bytes()[:-20])
    assert first_bad(tmp_path)[0] == 59


def test_rewritten_and_rechained_log_is_caught_by_a_checkpoint(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path, 60, checkpoint_every=10)
    for seg in segments(chain_dir):
        seg.unlink()
    state = ChainState("chain-000")  # the attacker recomputes the whole chain over an edited record 35
    lines = [state.append(record(i) if i != 35 else record(-35)) for i in range(60)]
    (chain_dir / "seg-000000000000.jsonl").write_bytes(b"".join(lines))
    bad_index, bad_cp, _ = first_bad(tmp_path)
    assert bad_index == 30 and bad_cp == 4  # between the checkpoints at 30 and 40 (#0 is the empty chain's)


def test_forged_checkpoint_is_found(tmp_path: Path) -> None:
    chain_dir = write_log(tmp_path, 60, checkpoint_every=10)
    cps = (chain_dir / CHECKPOINTS).read_bytes().splitlines()
    state = ChainState("chain-000")
    for i in range(60):
        state.append(record(i))
    forged = sign_checkpoint(state, HmacSigner(b"not-the-secret"), now_ns=1)
    cps[2] = orjson.dumps(forged.model_dump(mode="json"))
    (chain_dir / CHECKPOINTS).write_bytes(b"\n".join(cps) + b"\n")
    assert first_bad(tmp_path)[1] == 2
    tampered = Checkpoint.model_validate(orjson.loads(cps[3]))
    tampered.tree_size += 1  # a valid signature over other values
    cps[2] = orjson.dumps(tampered.model_dump(mode="json"))
    (chain_dir / CHECKPOINTS).write_bytes(b"\n".join(cps) + b"\n")
    assert first_bad(tmp_path)[1] == 2


def test_ed25519_checkpoints_verify_with_the_public_key_only(tmp_path: Path) -> None:
    private = Ed25519PrivateKey.generate()
    sink = FileAuditSink.lease(tmp_path, fsync=False)
    audit_log = AuditLog(sink, Ed25519Signer.from_private(private), checkpoint_every=5)
    audit_log.append([(f"req-{i}", record(i)) for i in range(12)], now_ns=1)
    audit_log.close(now_ns=2)
    assert verify_dir(tmp_path, Ed25519Signer(private.public_key())).ok
    assert not verify_dir(tmp_path, Ed25519Signer(Ed25519PrivateKey.generate().public_key())).ok


def test_restart_recovers_the_chain_and_its_keys(tmp_path: Path) -> None:
    write_log(tmp_path, 30)
    sink = FileAuditSink.lease(tmp_path, segment_records=25, fsync=False)
    assert sink.chain_id == "chain-000"  # the same chain, leased again
    audit_log = AuditLog(sink, SIGNER)
    assert audit_log.size == 30 and "req-29" in audit_log
    audit_log.append([("req-30", record(30))], now_ns=5)
    audit_log.close(now_ns=6)
    report = verify_dir(tmp_path, SIGNER)
    assert report.ok and report.records == 31


def test_two_processes_lease_two_chains(tmp_path: Path) -> None:
    first, second = FileAuditSink.lease(tmp_path), FileAuditSink.lease(tmp_path)
    assert first.chain_id != second.chain_id
    first.close()
    second.close()


async def test_append_async_stores_durably_and_checkpoints_like_append(tmp_path: Path) -> None:
    sink = FileAuditSink.lease(tmp_path)
    audit_log = AuditLog(sink, HmacSigner(b"k"), checkpoint_every=3)
    await audit_log.append_async([(f"req-{i}", record(i)) for i in range(2)], now_ns=1)
    await audit_log.append_async([("req-2", record(2))], now_ns=2)  # the third record: a checkpoint is due
    await audit_log.append_async([], now_ns=3)
    assert audit_log.size == 3 and "req-2" in audit_log
    sink.close()
    again = AuditLog(FileAuditSink.lease(tmp_path), HmacSigner(b"k"), checkpoint_every=3)
    assert again.size == 3 and again.keys == audit_log.keys
    assert again._checkpointed_size == 3  # signed after the records it covers were on disk
