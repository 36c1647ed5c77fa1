"""A tollway process runs numpy's OpenBLAS and Hugging Face tokenizers on one thread unless the operator sets them
(streams/cli/__init__.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = "import streams.cli, os; print(os.environ.get('OPENBLAS_NUM_THREADS'))"


def _blas_threads(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in {"OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"}}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=60)
    return out.stdout.strip()


@pytest.mark.parametrize(("env", "expected"), [
    ({}, "1"),
    ({"OPENBLAS_NUM_THREADS": "4"}, "4"),
    ({"OMP_NUM_THREADS": "2"}, "None"),
])
def test_one_blas_thread_unless_the_operator_sets_one(env: dict[str, str], expected: str) -> None:
    assert _blas_threads(**env) == expected


@pytest.mark.parametrize(("env", "expected"), [({}, "false"), ({"TOKENIZERS_PARALLELISM": "true"}, "true")])
def test_tokenizers_run_on_the_calling_thread_unless_the_operator_says_otherwise(env: dict[str, str],
                                                                               expected: str) -> None:
    clean = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    out = subprocess.run([sys.executable, "-c", "import streams.cli, os; print(os.environ['TOKENIZERS_PARALLELISM'])"],
                         env={**clean, **env}, capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == expected
