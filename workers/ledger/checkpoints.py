"""Where the ledger's state lives (``streams/ledger/app.py``).

The worker keeps the tables live in memory (:class:`LiveTable`) and writes only *checkpoints* to the Faust changelogs:
every cell and task written since the partition's last checkpoint, then the partition's checkpoint mark
(:func:`checkpoint_writes`). The responses topic is the source of truth and the state a pure function of it, so after
a restart the worker rebuilds ``seen`` from the topic's keys and re-applies the records after the checkpoint mark
(:func:`~workers.ledger.dedup.apply_response` again — the watermarks make a record already in a checkpointed cell a
no-op). A checkpoint mark that survived implies the cells written before it in the same changelog partition survived;
any later, partial checkpoint is repaired by the same re-apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


class LiveTable(dict[str, Any]):
    """A table kept in memory that remembers, per partition, the keys written since that partition's last checkpoint.

    Set :attr:`partition` before writing (keys always carry the partition of the record that wrote them).
    """

    def __init__(self) -> None:
        super().__init__()
        self.partition = 0
        self.dirty: dict[int, set[str]] = {}

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self.dirty.setdefault(self.partition, set()).add(key)


CHECKPOINT = "@checkpoint"


def checkpoint_key(partition: int) -> str:
    return orjson.dumps([CHECKPOINT, partition]).decode()


def is_checkpoint_key(key: str) -> bool:
    return key.startswith(f'["{CHECKPOINT}"')


def checkpoint_writes(live: LiveTable, *, partition: int, offset: int) -> list[tuple[str, Any]]:
    """What a checkpoint of ``partition`` at ``offset`` writes to the changelog-backed table, in this order: every
    key written since the last checkpoint, then the mark (so a surviving mark vouches for the writes before it)."""
    writes = [(key, live[key]) for key in sorted(live.dirty.pop(partition, ()))]
    writes.append((checkpoint_key(partition), [offset]))
    return writes


def load_checkpoint(table: Mapping[str, Any], live: LiveTable) -> dict[int, int]:
    """Fill ``live`` from a recovered table; returns each partition's checkpoint mark (the last offset it covers)."""
    marks: dict[int, int] = {}
    for key, value in list(table.items()):
        if is_checkpoint_key(key):
            marks[orjson.loads(key)[1]] = value[0]
        else:
            dict.__setitem__(live, key, value)  # recovered, not dirty
    return marks
