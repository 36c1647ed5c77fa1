"""Retrieval chunks as they travel the compacted ``<prefix>.index.chunks`` topic.

Record key ``{tenant}/{chunk_id}``; value an :class:`IndexChunkEvent`, or no value (a tombstone) to delete the chunk.
Compaction keeps the newest value per key, so reading the topic from the start rebuilds the current index.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.envelope import SCHEMA_VERSION


class IndexChunkEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["index_chunk"] = "index_chunk"
    tenant: str = Field(min_length=1, max_length=128)
    doc_id: str = Field(min_length=1, max_length=512)
    chunk_id: str = Field(min_length=1, max_length=600)  # "{doc_id}#{seq}"
    seq: int = Field(ge=0)
    text: str = Field(min_length=1)
    labels: list[str] = Field(default_factory=list)  # ACL: visible to principals holding any of these; [] = all
    region: str | None = None  # residency: only requests allowed this region see the chunk
    source: str = ""
    indexed_at_ms: int = 0

    @property
    def record_key(self) -> bytes:
        return record_key(self.tenant, self.chunk_id)


def record_key(tenant: str, chunk_id: str) -> bytes:
    return f"{tenant}/{chunk_id}".encode()
