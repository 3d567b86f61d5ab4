"""Run every benchmark in one go and print one table of ratios measured in the same run.

`python -m benchmarks.run_all [--out benchmarks/results.json] [--only train_step,cache_read]`

Each benchmark module exposes `run(**kwargs) -> dict` with a `ratios` mapping
{name: {"value": float, "target": float | None, "higher_is_better": bool, "what": str}} and
whatever raw numbers it measured; this driver only collects, tabulates and writes JSON. Each
benchmark runs in a fresh interpreter, so its peak memory and caches are its own (in one process
the cache benchmark's peak RSS included the train-step benchmark's: 1.39 GB instead of ~0.34).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCHMARKS: tuple[str, ...] = (
    "benchmarks.train_step",
    "benchmarks.cache_read",
    "benchmarks.interventions",
    "benchmarks.extract",
    "benchmarks.sweep",
    "benchmarks.convert_io",
    "benchmarks.phantoms",
)


def machine_description() -> dict:
    """What ran the benchmarks: CPU, cores, accelerators seen by JAX and torch."""
    info: dict = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }
    try:
        import jax

        info["jax_devices"] = [str(d) for d in jax.devices()]
    except Exception as err:  # noqa: BLE001 - description only
        info["jax_devices"] = f"unavailable: {err}"
    try:
        import torch

        info["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as err:  # noqa: BLE001
        info["torch_cuda"] = f"unavailable: {err}"
    return info


def format_table(results: dict[str, dict]) -> str:
    """One row per measured ratio: benchmark, ratio, value, target, verdict."""
    rows = [("benchmark", "ratio", "value", "target", "met")]
    for name, result in results.items():
        if "error" in result:
            rows.append((name, "(failed)", result["error"][:60], "", ""))
            continue
        for ratio_name, r in result.get("ratios", {}).items():
            target = r.get("target")
            if target is None:
                met = ""
            elif r.get("higher_is_better", True):
                met = "yes" if r["value"] >= target else "NO"
            else:
                met = "yes" if r["value"] <= target else "NO"
            rows.append((name, ratio_name, f"{r['value']:.3g}", "" if target is None else f"{target:g}", met))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_one(module_name: str) -> dict:
    """Run one benchmark here; a failure becomes ``{"error": ...}`` (traceback printed)."""
    try:
        return importlib.import_module(module_name).run()
    except Exception as err:  # noqa: BLE001 - one failing benchmark must not hide the others
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"}


def run_isolated(module_name: str) -> dict:
    """Run one benchmark in a fresh interpreter and return its result (its output is shown)."""
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        proc = subprocess.run([sys.executable, "-m", "benchmarks.run_all", "--one", module_name,
                               "--result", str(result_path)])
        if not result_path.exists():
            return {"error": f"the benchmark process exited with status {proc.returncode} and wrote no result"}
        return json.loads(result_path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--only", default="", help="comma-separated subset, e.g. train_step,cache_read")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this module here ...
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # ... and write its result here
    args = parser.parse_args(argv)
    if args.one:
        result = run_one(args.one)
        args.result.write_text(json.dumps(result, default=float))
        return 0 if "error" not in result else 1
    chosen = [b for b in BENCHMARKS if not args.only or b.split(".")[-1] in args.only.split(",")]
    results: dict[str, dict] = {}
    for module_name in chosen:
        short = module_name.split(".")[-1]
        print(f"== {short}", flush=True)
        started = time.perf_counter()
        results[short] = run_isolated(module_name)
        results[short]["wall_s"] = time.perf_counter() - started
    report = {"machine": machine_description(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float))
    os.replace(tmp, args.out)
    print()
    print(format_table(results))
    print(f"\nwritten {args.out}")
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
