"""The tamper-evident part of the audit log: a hash chain, an RFC 6962 Merkle tree and signed checkpoints.

Hashing is domain-separated so no value of one kind can pass for another (RFC 6962 §2.1, plus a third prefix for the
chain links)::

    leaf_i  = SHA-256(0x00 || record bytes)                  the record exactly as stored on disk
    node    = SHA-256(0x01 || left || right)                 Merkle interior nodes
    chain_i = SHA-256(0x02 || chain_{i-1} || leaf_i)         chain_{-1} = SHA-256(0x02 || "genesis" || chain id)

The chain pins every record to its position: a flipped byte, a deleted, inserted or reordered line breaks the link
at exactly that index. The chain is unkeyed (anyone can verify it), so somebody who rewrites the file can also
recompute it; the **signed checkpoints** (tree size + Merkle root + chain head, HMAC-SHA256 with the audit secret or
Ed25519) catch that, and a truncation, down to the interval between two checkpoints. Checkpoints are written when a
chain is created, every N records, every T seconds and when the stage stops — so checkpoints that are missing, or an
unsigned tail longer or older than that, are themselves evidence (``workers/audit/verify.py``) — and each one goes,
with the leaves it covers, to the checkpoints topic as well (``workers/audit/witness.py``).

A chain segment line is ``{"i":<index>,"chain":"<64 hex>","record":<record bytes>}\\n`` — fixed layout, so the
record's bytes are sliced out and hashed exactly as written, never re-serialised.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas.audit import Checkpoint

LEAF_PREFIX, NODE_PREFIX, LINK_PREFIX = b"\x00", b"\x01", b"\x02"
_LINE_HEAD = b'{"i":'
_CHAIN_FIELD = b',"chain":"'
_RECORD_FIELD = b'","record":'
HASH_HEX_LEN = 64


def leaf_hash(record: bytes) -> bytes:
    return hashlib.sha256(LEAF_PREFIX + record).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def link_hash(previous: bytes, leaf: bytes) -> bytes:
    return hashlib.sha256(LINK_PREFIX + previous + leaf).digest()


def genesis(chain_id: str) -> bytes:
    return hashlib.sha256(LINK_PREFIX + b"genesis" + chain_id.encode()).digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH, the reference recursive definition (tests compare the incremental one against it)."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    split = 1 << ((len(leaves) - 1).bit_length() - 1)  # the largest power of two smaller than n
    return node_hash(merkle_root(leaves[:split]), merkle_root(leaves[split:]))


@dataclass
class MerkleAccumulator:
    """The RFC 6962 root of an append-only list in O(log n) memory: a stack of perfect-subtree roots (peaks)."""

    size: int = 0
    peaks: list[tuple[int, bytes]] = field(default_factory=list)  # (height, root), tallest first

    def append(self, leaf: bytes) -> None:
        height, node = 0, leaf
        while self.peaks and self.peaks[-1][0] == height:
            _, left = self.peaks.pop()
            node, height = node_hash(left, node), height + 1
        self.peaks.append((height, node))
        self.size += 1

    def root(self) -> bytes:
        if not self.peaks:
            return hashlib.sha256(b"").digest()
        # MTH splits at the largest power of two, so the root folds the peaks from the smallest (rightmost) up.
        node = self.peaks[-1][1]
        for _, left in reversed(self.peaks[:-1]):
            node = node_hash(left, node)
        return node


def encode_line(index: int, chain: bytes, record: bytes) -> bytes:
    return b"%s%d%s%s%s%s}\n" % (_LINE_HEAD, index, _CHAIN_FIELD, chain.hex().encode(), _RECORD_FIELD, record)


def parse_line(line: bytes) -> tuple[int, str, bytes]:
    """(index, chain hex, record bytes) of one segment line (without its newline); ValueError if malformed."""
    if not line.startswith(_LINE_HEAD) or not line.endswith(b"}"):
        raise ValueError("not a chain line")
    comma = line.find(_CHAIN_FIELD, len(_LINE_HEAD))
    digits = line[len(_LINE_HEAD):comma]
    if comma < 0 or not digits.isdigit():
        raise ValueError("bad index field")
    start = comma + len(_CHAIN_FIELD)
    chain = line[start:start + HASH_HEX_LEN]
    if line[start + HASH_HEX_LEN:start + HASH_HEX_LEN + len(_RECORD_FIELD)] != _RECORD_FIELD:
        raise ValueError("bad chain field")
    return int(digits), chain.decode("ascii"), line[start + HASH_HEX_LEN + len(_RECORD_FIELD):-1]


@dataclass
class ChainState:
    """The head of one chain: its size, last link and Merkle accumulator. ``append`` returns the line to store."""

    chain_id: str
    size: int = 0
    head: bytes = b""
    merkle: MerkleAccumulator = field(default_factory=MerkleAccumulator)
    last_leaf: bytes = b""  # the leaf of the record appended last (the checkpoint witness sends the leaves)

    def __post_init__(self) -> None:
        if not self.head:
            self.head = genesis(self.chain_id)

    def append(self, record: bytes) -> bytes:
        leaf = self.last_leaf = leaf_hash(record)
        self.head = link_hash(self.head, leaf)
        self.merkle.append(leaf)
        line = encode_line(self.size, self.head, record)
        self.size += 1
        return line


# --------------------------------------------------------------------------- checkpoint signatures
class Signer(Protocol):
    alg: str
    key_id: str

    def sign(self, message: bytes) -> bytes: ...

    def verify(self, message: bytes, signature: bytes) -> bool: ...


class HmacSigner:
    alg = "hmac-sha256"

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        # An id that names the key without revealing it, so a verifier can say which secret it needs.
        self.key_id = hashlib.sha256(b"tollway-audit-key-id\x00" + secret).hexdigest()[:16]

    def sign(self, message: bytes) -> bytes:
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def verify(self, message: bytes, signature: bytes) -> bool:
        return hmac.compare_digest(self.sign(message), signature)


class Ed25519Signer:
    """Signs with a private key; verifies with the public key alone (pass ``private_key=None``)."""

    alg = "ed25519"

    def __init__(self, public_key: Ed25519PublicKey, private_key: Ed25519PrivateKey | None = None) -> None:
        self._public, self._private = public_key, private_key
        self.key_id = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()[:16]

    @classmethod
    def from_private(cls, private_key: Ed25519PrivateKey) -> Ed25519Signer:
        return cls(private_key.public_key(), private_key)

    def sign(self, message: bytes) -> bytes:
        if self._private is None:
            raise ValueError("this Ed25519 signer holds only the public key")
        return self._private.sign(message)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self._public.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def checkpoint_message(checkpoint: Checkpoint) -> bytes:
    return orjson.dumps(checkpoint.model_dump(mode="json", exclude={"signature"}), option=orjson.OPT_SORT_KEYS)


def sign_checkpoint(state: ChainState, signer: Signer, *, now_ns: int) -> Checkpoint:
    checkpoint = Checkpoint(chain_id=state.chain_id, tree_size=state.size, root=state.merkle.root().hex(),
                            chain_head=state.head.hex(), signed_at_ns=now_ns, alg=signer.alg,
                            key_id=signer.key_id)
    checkpoint.signature = signer.sign(checkpoint_message(checkpoint)).hex()
    return checkpoint


def checkpoint_signature_ok(checkpoint: Checkpoint, signer: Signer) -> bool:
    if checkpoint.alg != signer.alg or checkpoint.key_id != signer.key_id:
        return False
    try:
        signature = bytes.fromhex(checkpoint.signature)
    except ValueError:
        return False
    return signer.verify(checkpoint_message(checkpoint), signature)
