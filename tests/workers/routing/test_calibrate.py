from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas.errors import ConfigError
from workers.routing import calibrate as cal
from workers.routing.auto import auto_tier
from workers.routing.calibrated import decide, dump_params, load_params, parse_params
from workers.routing.catalog import load_catalog
from workers.routing.features import extract

CATALOG = load_catalog()
DOC = " ".join(["The audit found that three of five warehouses missed the stock-count deadline in May."] * 14)
SMALL = ["capital of {}?", "hey, what's the currency of {}?", "translate 'good morning' to {}", "thanks, {}!"]
MEDIUM = ["Summarise this for the {} team:\n\n" + DOC, "Explain why {} bonds fall when rates rise, and compare them "
          "with equities.", "Write a Python function that parses {} dates, with tests."]
LARGE = ["Plan a zero downtime migration of the {} billing database: steps, risks, owners, budget, timeline and "
         "rollback.", "Prove that there are infinitely many primes of the form 4k+3 and derive a bound, {} style."]
PLACES = ["Peru", "Chile", "Norway", "Kenya", "Japan", "Canada", "Spain", "Egypt"]


def write_labels(path: Path, tenant: str | None = None) -> Path:
    lines = []
    for tier, templates in (("small", SMALL), ("medium", MEDIUM), ("large", LARGE)):
        for t, template in enumerate(templates):
            for place in PLACES:
                row = {"prompt": template.format(place), "tier": tier, "group": f"{tier}-{t}-{place}"}
                if tenant:
                    row["tenant"] = tenant
                lines.append(orjson.dumps(row))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_newton_fit_separates_a_separable_feature() -> None:
    z = np.array([[-1.0], [-0.5], [0.5], [1.0]] * 5)
    beta = cal.fit_logistic(z, (z[:, 0] > 0).astype(float), lam=0.1)
    assert beta[1] > 1


def test_calibrate_writes_versioned_params_the_router_reads(tmp_path: Path) -> None:
    rows = cal.read_labels(write_labels(tmp_path / "labels.jsonl"), CATALOG)
    params, reports = cal.calibrate(rows, CATALOG, target_quality=0.97, min_tenant_rows=10)
    chosen = reports[0].chosen
    assert chosen["quality"] >= 0.97 and chosen["saving"] > 0.5
    assert [p["quality"] for p in reports[0].frontier] == sorted((p["quality"] for p in reports[0].frontier),
                                                                 reverse=True)
    out = tmp_path / "router.params.json"
    dump_params(params, out)
    loaded = load_params(out)
    assert loaded is not None and loaded.version == params.version and len(params.version) == 12
    assert decide(extract("capital of Portugal?"), "anyone", loaded).tier == "small"  # type: ignore[union-attr]
    long_task = decide(extract("Summarise this for the board:\n\n" + DOC), "anyone", loaded)
    assert long_task is not None and long_task.tier != "small" and "P(≥medium)" in long_task.explain()


def test_params_hot_reload_and_bad_files(tmp_path: Path) -> None:
    rows = cal.read_labels(write_labels(tmp_path / "labels.jsonl", tenant="acme"), CATALOG)
    params, reports = cal.calibrate(rows, CATALOG, min_tenant_rows=10)
    assert {r.tenant for r in reports} == {"*", "acme"}
    out = tmp_path / "p.json"
    assert load_params(out, now=0.0) is None  # no file: the heuristic decides
    dump_params(params, out)
    os.utime(out, ns=(1, 1))
    assert load_params(out, now=10.0) is not None  # changed on disk: re-read
    with pytest.raises(ConfigError, match="invalid"):
        parse_params(b'{"schema_version": 99}')


def test_bad_label_lines_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "tier": "small"}\n{"prompt": "hi", "tier": "huge"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: 'tier' must be one of"):
        cal.read_labels(bad, CATALOG)
    bad.write_text('{"prompt": "hi", "model": "max-us", "split": "test"}\nnot json\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: not JSON"):
        cal.read_labels(bad, CATALOG)
    bad.write_text('{"prompt": "hi", "model": "max-us", "split": "test"}\n')
    with pytest.raises(ConfigError, match="no label rows in split 'tune'"):
        cal.read_labels(bad, CATALOG, split="tune")
    assert cal.read_labels(bad, CATALOG)[0].tier_rank == 2  # a preferred model means its tier


def test_a_broken_params_file_falls_back_to_the_heuristic(tmp_path: Path, make_envelope) -> None:  # type: ignore
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    auto = auto_tier(make_envelope("Hello!"), broken)
    assert auto.learned is None and auto.heuristic is not None and auto.tier == "small"
