"""The chaos run's table: every scenario appends its figures; the table prints (and is saved) at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from streams.settings import REPO_ROOT
from tests.chaos.harness import Figures, table

TABLE_FILE = REPO_ROOT / ".state" / "chaos" / "table.txt"


@pytest.fixture(scope="session")
def chaos_results() -> Iterator[list[Figures]]:
    results: list[Figures] = []
    yield results
    if results:
        text = table(results)
        TABLE_FILE.parent.mkdir(parents=True, exist_ok=True)
        TABLE_FILE.write_text(text + "\n")
        print("\n\n" + text + f"\n(saved to {TABLE_FILE.relative_to(REPO_ROOT)})\n")
