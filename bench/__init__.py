"""Benchmarks: every figure is a ratio against a baseline measured in the same run (the machines are shared).

    bench/run.py          ``make bench``: runs every scenario, writes bench/results/latest.{json,md,png}
    bench/systems.py      the systems under test, each in its own process(es): relay, tollway, tollway's shell
    bench/relay.py        the physical limit: six aiokafka hops whose per-event work is orjson + a stamp
    bench/passthrough.py  tollway's runners with pass-through stages (the shell's own cost)
    bench/load.py         payloads, a burst / open-loop loader and a collector that timestamps arrivals
    bench/micro.py        CPU per record of each hop without the broker (relay, shell, shell + real stages)
    bench/report.py       the markdown table and the plot

Scenario modules written by other areas (``bench/cache_bench.py`` …) are run by ``bench/run.py`` when present, as
``python -m bench.<module> --json``: the last line of stdout that parses as a JSON object is recorded; a ``rows``
list in it (``figure``, ``value``, ``unit``, ``baseline``, ``ratio``, ``target``, ``pass``) joins the table.
"""
