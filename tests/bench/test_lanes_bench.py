"""The lanes figure's rows (pure: no pipeline is started)."""

from __future__ import annotations

from bench.lanes_bench import TARGET_RATIO, _row


def test_the_figure_passes_within_the_target_ratio_only_when_every_request_was_ok() -> None:
    within = _row("p99", 1150.0, "ms", baseline=1000.0, max_ratio=TARGET_RATIO)
    assert (within["ratio"], within["pass"]) == (1.15, True)
    assert _row("p99", 1300.0, "ms", baseline=1000.0, max_ratio=TARGET_RATIO)["pass"] is False
    assert _row("p99", 900.0, "ms", baseline=1000.0, max_ratio=TARGET_RATIO, ok=False)["pass"] is False


def test_rows_without_a_target_carry_no_verdict() -> None:
    row = _row("backfill", 5.0, "req/s", baseline=None)
    assert (row["ratio"], row["pass"]) == (None, None)
