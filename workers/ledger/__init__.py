"""The cost ledger's pure logic, shared by the Faust agent, ``ledger_rows``, reconcile and reprice.

Each response adds one :class:`~workers.ledger.cells.Counters` to two cells (tenant × model × hour window, and × day
window; windows are tumbling, UTC, taken from the request's ``created_at_ns`` so a replayed response lands in the same
cell) and, when the request carried a ``task_id``, to its task.

* :mod:`~workers.ledger.cells` — counters, windows, cells and the table keys;
* :mod:`~workers.ledger.dedup` — counted once: per-cell offset watermarks and the ``seen`` table (the argument);
* :mod:`~workers.ledger.checkpoints` — live tables and the checkpoints written to the Faust changelogs;
* :mod:`~workers.ledger.aggregator` — the read side: cells summed into rows, and the ledger in plain dicts;
* :mod:`~workers.ledger.reconcile` — the ledger's cost against the audit log's;
* :mod:`~workers.ledger.reprice` — price files and recomputing costs from retained usage.

Tokens: ``input_tokens`` are the uncached prompt tokens and ``cached_input_tokens`` the prompt tokens served from a
prompt cache (disjoint, as :class:`schemas.envelope.Usage` adds them).
"""
