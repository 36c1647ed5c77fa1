"""The second witness: every signed checkpoint, with the leaves it covers, on the compacted topic
``<prefix>.audit.checkpoints`` — outside the disk an attacker would rewrite.

A checkpoint alone pins a prefix of the chain to a Merkle root; the leaves beside it pin each record to its index, so a
copy of the log can be checked record by record (an edit, an insert, a reorder is found at its own index) and the
records on ``<prefix>.audit.log``, which carry no chain position, can be placed in their chain. One message::

    key   "<chain id>/<tree size, 12 digits>/<first leaf index, 12 digits>"   (unique: compaction only drops repeats)
    value {"checkpoint": {signed checkpoint}, "first": <first leaf's index>, "leaves": "<base64 of 32-byte leaves>"}

A checkpoint's message carries the leaves since the chain's previous checkpoint, in slices of at most
``MAX_LEAVES_PER_MESSAGE`` (a later slice repeats the checkpoint). The leaves are not signed themselves: they must fold
into the signed root and chain head, which the verifier checks.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from pydantic import ValidationError

from schemas.audit import Checkpoint
from workers.audit.chain import Signer, checkpoint_signature_ok

LEAF_BYTES = 32
MAX_LEAVES_PER_MESSAGE = 8_192  # 350 KB of base64: under a producer batch and the topic's max.message.bytes


def witness_messages(checkpoint: Checkpoint, first: int, leaves: bytes) -> list[tuple[bytes, bytes]]:
    """(key, value) messages for one checkpoint and the leaves [first, tree_size) it adds to the chain."""
    body = checkpoint.model_dump(mode="json")
    step = MAX_LEAVES_PER_MESSAGE * LEAF_BYTES
    out = []
    for start in range(0, max(len(leaves), 1), step):
        at = first + start // LEAF_BYTES
        key = f"{checkpoint.chain_id}/{checkpoint.tree_size:012d}/{at:012d}".encode()
        value = orjson.dumps({"checkpoint": body, "first": at,
                              "leaves": base64.b64encode(leaves[start:start + step]).decode()})
        out.append((key, value))
    return out


@dataclass
class WitnessChain:
    """One chain as the topic witnessed it: its checkpoints (signature checked, by tree size) and its leaves from 0."""

    chain_id: str
    checkpoints: list[Checkpoint] = field(default_factory=list)
    leaves: bytearray = field(default_factory=bytearray)
    problem: tuple[int, str] | None = None  # (first bad index, reason) found while assembling

    @property
    def covered(self) -> int:
        return len(self.leaves) // LEAF_BYTES

    def leaf(self, index: int) -> bytes:
        return bytes(self.leaves[index * LEAF_BYTES:(index + 1) * LEAF_BYTES])


@dataclass
class Witness:
    chains: dict[str, WitnessChain] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # messages that are not witness messages


def collect_witness(values: Iterable[bytes | None], signer: Signer) -> Witness:
    """Assemble the witness topic's messages (any order, repeats allowed) into one leaf sequence per chain."""
    witness = Witness()
    slices: dict[str, list[tuple[int, bytes]]] = {}
    for position, value in enumerate(values):
        try:
            doc = orjson.loads(value or b"")
            checkpoint = Checkpoint.model_validate(doc["checkpoint"])
            first, leaves = int(doc["first"]), base64.b64decode(doc["leaves"], validate=True)
        except (orjson.JSONDecodeError, ValidationError, KeyError, TypeError, ValueError):
            witness.unreadable.append(f"message #{position} is not a checkpoint witness")
            continue
        chain = witness.chains.setdefault(checkpoint.chain_id, WitnessChain(checkpoint.chain_id))
        if chain.problem is not None:
            continue
        if not checkpoint_signature_ok(checkpoint, signer):
            chain.problem = (first, f"checkpoint (tree size {checkpoint.tree_size}) on the topic: signature does "
                                    f"not verify ({checkpoint.alg}, key {checkpoint.key_id}): forged or foreign")
        elif len(leaves) % LEAF_BYTES or first < 0 or first + len(leaves) // LEAF_BYTES > checkpoint.tree_size:
            chain.problem = (first, f"witness message for tree size {checkpoint.tree_size} has malformed leaves")
        else:
            chain.checkpoints.append(checkpoint)
            slices.setdefault(checkpoint.chain_id, []).append((first, leaves))
    for chain_id, parts in slices.items():
        chain = witness.chains[chain_id]
        _assemble(chain, sorted(parts, key=lambda part: part[0]))
        unique = {(c.tree_size, c.signed_at_ns, c.signature): c for c in chain.checkpoints}
        chain.checkpoints = sorted(unique.values(), key=lambda c: (c.tree_size, c.signed_at_ns))
    return witness


def _assemble(chain: WitnessChain, parts: list[tuple[int, bytes]]) -> None:
    for first, leaves in parts:
        covered = chain.covered
        if first > covered:
            chain.problem = chain.problem or (covered, f"leaves [{covered}, {first}) are missing on the topic: "
                                                       f"witness messages were removed")
            return
        overlap = min(len(leaves), (covered - first) * LEAF_BYTES)
        start = first * LEAF_BYTES
        if bytes(chain.leaves[start:start + overlap]) != leaves[:overlap]:
            mismatch = next(i for i in range(0, overlap, LEAF_BYTES)
                            if chain.leaves[start + i:start + i + LEAF_BYTES] != leaves[i:i + LEAF_BYTES])
            chain.problem = chain.problem or (first + mismatch // LEAF_BYTES,
                                              "two witness messages disagree about this leaf")
            return
        chain.leaves += leaves[overlap:]
