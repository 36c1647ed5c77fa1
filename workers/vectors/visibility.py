"""Which chunks a request may see.

Visibility rule (documented in the README too): a chunk without labels is visible to every principal of its
tenant; a labelled chunk is visible only to a principal holding at least one of its labels. A chunk with a region is
visible only when the request's allowed regions are unknown or include it. Tenants never mix: the index keeps one
matrix per tenant, so a query never touches another tenant's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from workers.vectors.chunks import IndexedChunk


@dataclass(frozen=True)
class Visibility:
    """What one request may see: its principal's labels and, if known, its allowed regions."""

    labels: frozenset[str] = frozenset()
    regions: frozenset[str] | None = None

    def allows(self, chunk: IndexedChunk) -> bool:
        if chunk.labels and not (chunk.labels & self.labels):
            return False
        return not (chunk.region is not None and self.regions is not None and chunk.region not in self.regions)


def visibility_masks(chunks: Sequence[IndexedChunk], visibility: Sequence[Visibility]
                     ) -> npt.NDArray[np.bool_] | None:
    """A ``(len(visibility), len(chunks))`` mask of the rows each query may match (None for no queries)."""
    # One mask per distinct visibility (usually one or two per batch), not one per query.
    masks: dict[Visibility, npt.NDArray[np.bool_]] = {}
    for vis in visibility:
        if vis not in masks:
            masks[vis] = np.fromiter((vis.allows(c) for c in chunks), dtype=bool, count=len(chunks))
    return np.stack([masks[vis] for vis in visibility]) if visibility else None
