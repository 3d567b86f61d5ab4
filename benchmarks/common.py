"""What the benchmark scripts share: printing their ratios and writing their result JSON."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cache.atomic import write_json_atomic


def write_result(path: str | os.PathLike, result: dict[str, Any]) -> None:
    """Write ``result`` to ``path`` as JSON (indent 2, no trailing newline), atomically; parent created."""
    write_json_atomic(path, result, indent=2)


def print_ratios(result: dict[str, Any]) -> None:
    """One line per ratio of ``result["ratios"]``: value, target and what it compares."""
    for name, r in result["ratios"].items():
        target = "none" if r.get("target") is None else f"{r['target']:g}"
        what = f" - {r['what']}" if r.get("what") else ""
        print(f"{name}: {r['value']:.3g} (target {target}){what}")


def report(result: dict[str, Any], table: str, out: Path | None) -> int:
    """Print a benchmark's table and ratio lines, write its JSON to ``out`` if given; exit status 0."""
    print(table)
    print_ratios(result)
    if out is not None:
        write_result(out, result)
    return 0
