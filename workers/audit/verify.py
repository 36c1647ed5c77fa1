"""Verifying an audit log on disk: every chain, every link, every checkpoint; the first bad index and why.

What each kind of tampering looks like to the verifier (index = position in the chain, counted from 0):

- a flipped byte in a line           the line at i no longer parses, or its index or chain link does not match → i
- a deleted line (or segment)        the line found at i carries index i+1 (or a segment starts past i)      → i
- an inserted or reordered line      the line at i carries another index or a link that does not chain       → i
- a truncated tail                   a checkpoint claims more records than are present (m)                   → m
- a rewritten, re-chained log        a checkpoint's Merkle root or chain head differs; the first bad index is
                                     within [previous checkpoint, this checkpoint), reported as its start
- a forged or foreign checkpoint     its signature does not verify under the configured key   → that checkpoint
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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

    @property
    def ok(self) -> bool:
        return all(chain.ok for chain in self.chains)

    @property
    def records(self) -> int:
        return sum(chain.records for chain in self.chains)


def verify_chain(chain_id: str, segment_data: Iterable[tuple[int, bytes]], checkpoint_lines: list[bytes],
                 signer: Signer, *, seen_keys: dict[str, str] | None = None) -> ChainReport:
    """``segment_data`` yields (first index named by the segment, its bytes) in order."""
    report = ChainReport(chain_id)
    checkpoints = _checkpoints(chain_id, checkpoint_lines, signer, report)
    if report.bad_checkpoint is not None:
        return report
    seen = seen_keys if seen_keys is not None else {}
    merkle, head, index = MerkleAccumulator(), genesis(chain_id), 0
    next_cp, verified_size = 0, 0

    def check_checkpoints() -> bool:
        nonlocal next_cp, verified_size
        while next_cp < len(checkpoints) and checkpoints[next_cp].tree_size == index:
            checkpoint = checkpoints[next_cp]
            if checkpoint.root != merkle.root().hex() or checkpoint.chain_head != head.hex():
                report.first_bad_index, report.bad_checkpoint = verified_size, next_cp
                report.reason = (f"checkpoint #{next_cp} (tree size {checkpoint.tree_size}) does not match the "
                                 f"records: a record in [{verified_size}, {checkpoint.tree_size}) was changed and "
                                 f"the chain recomputed")
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
        report.first_bad_index, report.bad_checkpoint = index, next_cp
        report.reason = f"log truncated: checkpoint #{next_cp} covers {claimed} records, only {index} present"
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


def verify_dir(root: Path, signer: Signer) -> VerifyReport:
    """Verify every chain under ``root`` (``<state_dir>/audit/<prefix>``); duplicates are checked across chains."""
    report = VerifyReport()
    seen: dict[str, str] = {}
    for chain_dir in chain_dirs(root):
        cp_path = chain_dir / CHECKPOINTS
        cp_lines = [line for line in cp_path.read_bytes().split(b"\n") if line] if cp_path.exists() else []
        report.chains.append(verify_chain(chain_dir.name, _segment_data(chain_dir), cp_lines, signer,
                                          seen_keys=seen))
    return report
