"""Every benchmark still runs (a few seconds, no timing assertions): they cannot rot."""

from __future__ import annotations

import importlib

import pytest

from bench.__main__ import MODULES


@pytest.mark.parametrize("name", MODULES)
def test_benchmark_smoke_run_prints_a_table(name: str) -> None:
    output = importlib.import_module(f"bench.{name}").smoke()
    assert output.startswith("== ")
    assert "machine:" in output and "ratio" in output
