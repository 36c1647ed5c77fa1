"""Verifying an audit log on disk: every chain, every link, every checkpoint; the first bad index and why.

What each kind of tampering looks like to the verifier (index = position in the chain, counted from 0):

- a flipped byte in a line           the line at i no longer parses, or its index or chain link does not match → i
- a deleted line (or segment)        the line found at i carries index i+1 (or a segment starts past i)      → i
- an inserted or reordered line      the line at i carries another index or a link that does not chain       → i
- a truncated tail                   a checkpoint claims more records than are present (m)                   → m
- a rewritten, re-chained log        a checkpoint's Merkle root or chain head differs; the first bad index is
                                     within [previous checkpoint, this checkpoint), reported as its start
- a forged or foreign checkpoint     its signature does not verify under the configured key   → that checkpoint

Somebody who rewrites the log cannot sign, but can delete: all checkpoints, the ones covering an edit, or the tail
with its checkpoints. So the checkpoints themselves must be complete (:class:`TailLimits`, tied to how often the
writer signs):

- no checkpoint at all under records                                                                       → 0
- two consecutive checkpoints (or 0 and the first) further apart than ``max_records``     → the earlier one's size
- an unsigned tail longer than ``max_records``, or whose last checkpoint is older than ``max_age``   → its start

With the topic witness (``workers/audit/witness.py``) each record is also compared with the leaf the topic holds for
its index, so an edit, insert or reorder is found at its own index even when the chain was recomputed, and a tail
cut at a checkpoint is found where the topic's copy goes on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from pydantic import ValidationError

from schemas.audit import Checkpoint
from workers.audit.chain import (
    MerkleAccumulator,
    Signer,
    checkpoint_signature_ok,
    genesis,
    leaf_hash,
    link_hash,
    parse_line,
)
from workers.audit.sink import CHECKPOINTS, chain_dirs, segments
from workers.audit.witness import Witness, WitnessChain


@dataclass(frozen=True)
class TailLimits:
    """How much of a chain may legitimately be unsigned when it is verified.

    The writer signs once ``checkpoint_records`` are unsigned after an append (one append is at most a batch) and once
    the oldest unsigned record waited ``checkpoint_interval_s`` (checked every second), so consecutive checkpoints are
    at most ``checkpoint_records + batch_max_records`` apart and a live tail is younger than about an interval and a
    second. Three intervals leave room for a busy event loop. A crashed writer leaves a tail until it restarts.
    """

    max_records: int = 1000 + 500  # the settings' defaults: audit_checkpoint_records + batch_max_records
    max_age_ns: int = 30 * 1_000_000_000  # 3 × audit_checkpoint_interval_s

    @classmethod
    def for_writer(cls, *, checkpoint_records: int, checkpoint_interval_s: float,
                   batch_max_records: int) -> TailLimits:
        return cls(max_records=checkpoint_records + batch_max_records,
                   max_age_ns=int(3 * checkpoint_interval_s * 1_000_000_000))


def coverage_problem(checkpoints: Sequence[Checkpoint], records: int, limits: TailLimits,
                     now_ns: int) -> tuple[int, str] | None:
    """(first bad index, reason) when signed checkpoints are missing or the unsigned tail is too long or too old."""
    if records and not checkpoints:
        return 0, f"no signed checkpoint covers records [0, {records}): the checkpoints were deleted"
    previous = 0
    for checkpoint in checkpoints:
        if checkpoint.tree_size - previous > limits.max_records:
            return previous, (f"checkpoints missing: none between records {previous} and {checkpoint.tree_size} "
                              f"(the writer signs at least every {limits.max_records}): they were removed")
        previous = checkpoint.tree_size
    tail = records - previous
    if tail > limits.max_records:
        return previous, (f"unsigned tail: records [{previous}, {records}) follow the last checkpoint, more than "
                          f"{limits.max_records}: later checkpoints were removed")
    if tail > 0 and now_ns - checkpoints[-1].signed_at_ns > limits.max_age_ns:
        age_s = (now_ns - checkpoints[-1].signed_at_ns) / 1e9
        return previous, (f"unsigned tail: records [{previous}, {records}) follow a checkpoint signed {age_s:,.0f} s "
                          f"ago (limit {limits.max_age_ns / 1e9:,.0f} s): later checkpoints were removed, or the "
                          f"writer crashed (restarting the audit stage signs what it recovers)")
    return None


@dataclass
class ChainReport:
    chain_id: str
    records: int = 0
    checkpoints: int = 0
    first_bad_index: int | None = None
    bad_checkpoint: int | None = None  # position in checkpoints.jsonl
    reason: str = ""
    duplicate_keys: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_bad_index is None and self.bad_checkpoint is None and not self.duplicate_keys


@dataclass
class VerifyReport:
    chains: list[ChainReport] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # findings that belong to no chain index

    @property
    def ok(self) -> bool:
        return all(chain.ok for chain in self.chains) and not self.problems

    @property
    def records(self) -> int:
        return sum(chain.records for chain in self.chains)


def verify_chain(chain_id: str, segment_data: Iterable[tuple[int, bytes]], checkpoint_lines: list[bytes],
                 signer: Signer, *, seen_keys: dict[str, str] | None = None, limits: TailLimits | None = None,
                 now_ns: int | None = None, witness: WitnessChain | None = None) -> ChainReport:
    """``segment_data`` yields (first index named by the segment, its bytes) in order. With ``witness`` (the topic's
    copy of this chain) its checkpoints count too and every record must have the leaf the topic holds for its index."""
    report = ChainReport(chain_id)
    checkpoints = _checkpoints(chain_id, checkpoint_lines, signer, report)
    if report.bad_checkpoint is not None:
        return report
    origins: list[int | None] = list(range(len(checkpoints)))  # position in checkpoints.jsonl; None: the topic's
    witnessed = 0
    if witness is not None:
        witnessed = witness.covered if witness.problem is None else min(witness.covered, witness.problem[0])
        on_disk = {(c.tree_size, c.signed_at_ns, c.signature) for c in checkpoints}
        merged = [(c, o) for c, o in zip(checkpoints, origins, strict=True)]
        merged += [(c, None) for c in witness.checkpoints if (c.tree_size, c.signed_at_ns, c.signature) not in on_disk]
        merged.sort(key=lambda pair: pair[0].tree_size)
        checkpoints, origins = [c for c, _ in merged], [o for _, o in merged]
    seen = seen_keys if seen_keys is not None else {}
    merkle, head, index = MerkleAccumulator(), genesis(chain_id), 0
    next_cp, verified_size = 0, 0

    def name(position: int) -> str:
        origin = origins[position]
        return f"checkpoint #{origin}" if origin is not None else "the topic's checkpoint"

    def check_checkpoints() -> bool:
        nonlocal next_cp, verified_size
        while next_cp < len(checkpoints) and checkpoints[next_cp].tree_size == index:
            checkpoint = checkpoints[next_cp]
            if checkpoint.root != merkle.root().hex() or checkpoint.chain_head != head.hex():
                report.first_bad_index, report.bad_checkpoint = verified_size, origins[next_cp]
                report.reason = (f"{name(next_cp)} (tree size {checkpoint.tree_size}) does not match the records: "
                                 f"a record in [{verified_size}, {checkpoint.tree_size}) was changed and the chain "
                                 f"recomputed")
                return False
            verified_size, next_cp = checkpoint.tree_size, next_cp + 1
        return True

    if not check_checkpoints():
        return report
    for first_index, data in segment_data:
        if first_index != index:
            report.first_bad_index = index
            report.reason = f"segment starting at {first_index} follows record {index - 1}: records missing or extra"
            return report
        lines = data.split(b"\n")
        if lines[-1]:
            report.first_bad_index = index + len(lines) - 1
            report.reason = "the last line of a segment is incomplete (truncated mid-record)"
            return report
        for line in lines[:-1]:
            try:
                found, chain_hex, record = parse_line(line)
            except ValueError as exc:
                report.first_bad_index, report.reason = index, f"line does not parse ({exc})"
                return report
            if found != index:
                report.first_bad_index, report.reason = index, f"expected record {index}, found record {found}"
                return report
            leaf = leaf_hash(record)
            head = link_hash(head, leaf)
            if chain_hex != head.hex():
                report.first_bad_index, report.reason = index, "chain link does not match the record's hash"
                return report
            if index < witnessed and witness is not None and witness.leaf(index) != leaf:
                report.first_bad_index = index
                report.reason = "record differs from the topic's witness for this index (edited, inserted or moved)"
                return report
            try:
                key = orjson.loads(record)["dedup_key"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                report.first_bad_index, report.reason = index, "record is not an audit record"
                return report
            if key in seen:
                report.duplicate_keys.append(key)
            seen[key] = f"{chain_id}[{index}]"
            merkle.append(leaf)
            index += 1
            report.records = index
            if not check_checkpoints():
                return report
    if next_cp < len(checkpoints):
        claimed = checkpoints[next_cp].tree_size
        report.first_bad_index, report.bad_checkpoint = index, origins[next_cp]
        report.reason = f"log truncated: {name(next_cp)} covers {claimed} records, only {index} present"
    elif witnessed > index:
        report.first_bad_index = index
        report.reason = f"log truncated: the topic witnesses {witnessed} records, only {index} present"
    elif (problem := coverage_problem(checkpoints, index, limits or TailLimits(),
                                      time.time_ns() if now_ns is None else now_ns)) is not None:
        report.first_bad_index, report.reason = problem
    return report


def _checkpoints(chain_id: str, lines: list[bytes], signer: Signer, report: ChainReport) -> list[Checkpoint]:
    checkpoints: list[Checkpoint] = []
    for position, line in enumerate(lines):
        try:
            checkpoint = Checkpoint.model_validate(orjson.loads(line))
        except (orjson.JSONDecodeError, ValidationError):
            report.bad_checkpoint, report.reason = position, f"checkpoint #{position} does not parse"
            return checkpoints
        if checkpoint.chain_id != chain_id:
            report.bad_checkpoint, report.reason = position, f"checkpoint #{position} names chain {checkpoint.chain_id}"
            return checkpoints
        if not checkpoint_signature_ok(checkpoint, signer):
            report.bad_checkpoint = position
            report.reason = (f"checkpoint #{position} signature does not verify ({checkpoint.alg}, key "
                             f"{checkpoint.key_id}; verifier key {signer.alg} {signer.key_id}): forged or foreign")
            return checkpoints
        if checkpoints and checkpoint.tree_size < checkpoints[-1].tree_size:
            report.bad_checkpoint, report.reason = position, f"checkpoint #{position} goes back in tree size"
            return checkpoints
        checkpoints.append(checkpoint)
    report.checkpoints = len(checkpoints)
    return checkpoints


def _segment_data(chain_dir: Path) -> Iterator[tuple[int, bytes]]:
    for path in segments(chain_dir):
        try:
            first = int(path.stem[4:])
        except ValueError:
            first = -1
        yield first, path.read_bytes()


def verify_dir(root: Path, signer: Signer, *, limits: TailLimits | None = None, now_ns: int | None = None,
               witness: Mapping[str, WitnessChain] | None = None) -> VerifyReport:
    """Verify every chain under ``root`` (``<state_dir>/audit/<prefix>``); duplicates are checked across chains.
    With ``witness`` (the topic's chains) each chain is also checked against its copy, and a chain the topic
    witnessed must be on disk."""
    report = VerifyReport()
    seen: dict[str, str] = {}
    now_ns = time.time_ns() if now_ns is None else now_ns
    on_disk = set()
    for chain_dir in chain_dirs(root):
        on_disk.add(chain_dir.name)
        cp_path = chain_dir / CHECKPOINTS
        cp_lines = [line for line in cp_path.read_bytes().split(b"\n") if line] if cp_path.exists() else []
        report.chains.append(verify_chain(chain_dir.name, _segment_data(chain_dir), cp_lines, signer,
                                          seen_keys=seen, limits=limits, now_ns=now_ns,
                                          witness=(witness or {}).get(chain_dir.name)))
    for chain_id, chain in sorted((witness or {}).items()):
        if chain_id not in on_disk and chain.checkpoints and chain.checkpoints[-1].tree_size > 0:
            report.chains.append(ChainReport(chain_id, first_bad_index=0, reason=(
                f"chain is missing on disk: the topic witnesses {chain.checkpoints[-1].tree_size} records")))
    return report


def verify_topic(records: Iterable[bytes | None], witness: Witness, *, limits: TailLimits | None = None,
                 now_ns: int | None = None) -> VerifyReport:
    """Verify the topic copy: ``records`` are the values of ``<prefix>.audit.log``, ``witness`` the assembled
    ``<prefix>.audit.checkpoints``. Each witnessed leaf must fold into its signed checkpoints and name a record on the
    topic (→ its index); a record no chain witnesses is an unsigned tail, allowed only while short and young."""
    limits = limits or TailLimits()
    now_ns = time.time_ns() if now_ns is None else now_ns
    report = VerifyReport(problems=list(witness.unreadable))
    by_leaf = {leaf_hash(value): value for value in records if value}
    referenced: set[bytes] = set()
    seen: dict[str, str] = {}
    for chain_id, chain in sorted(witness.chains.items()):
        result = ChainReport(chain_id, checkpoints=len(chain.checkpoints))
        report.chains.append(result)
        usable = chain.covered if chain.problem is None else min(chain.covered, chain.problem[0])
        merkle, head, next_cp, verified = MerkleAccumulator(), genesis(chain_id), 0, 0
        problem: tuple[int, str] | None = None
        for index in range(usable + 1):
            while next_cp < len(chain.checkpoints) and chain.checkpoints[next_cp].tree_size == index:
                checkpoint = chain.checkpoints[next_cp]
                if checkpoint.root != merkle.root().hex() or checkpoint.chain_head != head.hex():
                    problem = (verified, f"the topic's leaves do not fold into its checkpoint (tree size "
                                         f"{checkpoint.tree_size}): a leaf in [{verified}, {index}) was altered")
                    break
                verified, next_cp = index, next_cp + 1
            if problem is not None or index == usable:
                break
            leaf = chain.leaf(index)
            value = by_leaf.get(leaf)
            if value is None:
                problem = (index, "the record witnessed at this index is not on the audit topic (deleted or altered)")
                break
            referenced.add(leaf)
            key = orjson.loads(value).get("dedup_key", "")
            if key in seen:
                result.duplicate_keys.append(key)
            seen[key] = f"{chain_id}[{index}]"
            head = link_hash(head, leaf)
            merkle.append(leaf)
            result.records = index + 1
        if problem is None and chain.problem is not None:
            problem = chain.problem
        if problem is None and next_cp < len(chain.checkpoints):
            problem = (usable, f"leaves [{usable}, {chain.checkpoints[next_cp].tree_size}) are missing on the topic")
        if problem is None:
            problem = coverage_problem(chain.checkpoints, usable, limits, now_ns)
        if problem is not None:
            result.first_bad_index, result.reason = problem
    report.problems += _unwitnessed(by_leaf, referenced, len(witness.chains), limits, now_ns)
    return report


def _unwitnessed(by_leaf: dict[bytes, bytes], referenced: set[bytes], chains: int, limits: TailLimits,
                 now_ns: int) -> list[str]:
    """Records on the topic that no checkpoint covers: each chain's unsigned tail, or records forged onto the topic."""
    loose = [value for leaf, value in by_leaf.items() if leaf not in referenced]
    if len(loose) > limits.max_records * max(chains, 1):
        return [f"{len(loose)} records on the audit topic are covered by no checkpoint (at most "
                f"{limits.max_records} per chain expected): forged onto the topic, or their checkpoints removed"]
    stale = 0
    for value in loose:
        try:
            audited_at_ns = int(orjson.loads(value)["audited_at_ns"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            audited_at_ns = 0
        stale += now_ns - audited_at_ns > limits.max_age_ns
    if stale:
        return [f"{stale} record(s) on the audit topic older than {limits.max_age_ns / 1e9:,.0f} s are covered by no "
                f"checkpoint: forged onto the topic, or their checkpoints removed"]
    return []
