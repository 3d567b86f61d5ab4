"""Run every benchmark in one go and print one table of ratios measured in the same run.

`python -m benchmarks.run_all [--out benchmarks/results.json] [--only train_step,cache_read]`

Each benchmark module exposes `run(**kwargs) -> dict` with a `ratios` mapping
{name: {"value": float, "target": float | None, "higher_is_better": bool, "what": str}} and
whatever raw numbers it measured; this driver only collects, tabulates and writes JSON.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--only", default="", help="comma-separated subset, e.g. train_step,cache_read")
    args = parser.parse_args(argv)
    chosen = [b for b in BENCHMARKS if not args.only or b.split(".")[-1] in args.only.split(",")]
    results: dict[str, dict] = {}
    for module_name in chosen:
        short = module_name.split(".")[-1]
        print(f"== {short}", flush=True)
        started = time.perf_counter()
        try:
            results[short] = importlib.import_module(module_name).run()
        except Exception as err:  # noqa: BLE001 - one failing benchmark must not hide the others
            traceback.print_exc()
            results[short] = {"error": f"{type(err).__name__}: {err}"}
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
