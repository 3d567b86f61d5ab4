"""benchmarks.run_all: each benchmark in its own interpreter, failures reported, not hidden."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.run_all import format_table, run_isolated

_GOOD = """
import os

def run():
    return {"pid": os.getpid(), "ratios": {"speedup": {"value": 2.0, "target": 1.5, "higher_is_better": True}}}
"""
_BAD = """
def run():
    raise RuntimeError("measured nothing")
"""


@pytest.fixture
def fake_benchmarks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake_bench_good.py").write_text(_GOOD)
    (tmp_path / "fake_bench_bad.py").write_text(_BAD)
    root = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(root)]))


def test_each_benchmark_runs_in_a_fresh_interpreter(fake_benchmarks) -> None:
    result = run_isolated("fake_bench_good")
    assert result["pid"] != os.getpid()
    row = next(line for line in format_table({"good": result}).splitlines() if "speedup" in line)
    assert row.split() == ["good", "speedup", "2", "1.5", "yes"]


def test_a_failing_benchmark_becomes_an_error_entry(fake_benchmarks) -> None:
    result = run_isolated("fake_bench_bad")
    assert result == {"error": "RuntimeError: measured nothing"}
    assert "(failed)" in format_table({"bad": result})
