"""Benchmarks: every figure is a ratio against a baseline measured in the same run (the machines are shared).

    bench/load.py     payloads, a burst / open-loop loader and a collector that timestamps arrivals
    bench/relay.py    the physical limit: a raw aiokafka relay through six topics (no tollway code on the path)
    bench/run.py      ``make bench``: runs every scenario, writes bench/results/latest.{json,md}
    bench/report.py   the markdown table and the optional plot

Scenario modules written by other areas (``bench/cache_bench.py`` …) are run by ``bench/run.py`` when present, as
``python -m bench.<module> --json``: the last line of stdout that parses as a JSON object is recorded; a ``rows``
list in it (``figure``, ``value``, ``unit``, ``baseline``, ``ratio``, ``target``, ``pass``) joins the table.
"""
