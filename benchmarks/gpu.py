"""One prepared GPU check: ceilings, SAE step, device-fed training, B5 extraction and the intervention sweep.

    python -m benchmarks.gpu [--out bench_out/gpu.json] [--workdir DIR] [--vendor DIR] [--only SECTIONS]
    python -m benchmarks.gpu --smoke        # tiny sizes, any device (the test suite runs this on CPU)

Run once on a machine with one NVIDIA GPU and whatever recent jax[cuda] / torch CUDA builds it has
(no network, nothing installed). `--vendor DIR` puts every pure-Python wheel in DIR on sys.path
(e.g. an `efficientnet_pytorch` wheel); a section whose dependency is missing is skipped with its
reason. Sections (each in this one process, same device, same run; < 6 minutes in all on an H100):
- ceiling: jitted (4096, 2048) @ (2048, 16384) matmul, bfloat16 and float32 (precision highest), TFLOP/s;
- step: the SAE train step 2048 -> 16384, batch 4096, relu and topk (k = 32), tokens/s, achieved
  TFLOP/s (10·B·D·S relu, 2·B·D·S + 12·B·k·D topk) and its fraction of each ceiling, vs the same
  relu step in eager PyTorch on the same GPU (`benchmarks.train_step`);
- feed: a float16 cache of synthetic B5 maps (48 x 29 x 2048, `--feed-gb` GB) written to disk, one
  epoch of that SAE trained from it through the device feed (`mammosae_jax.train`'s default):
  tokens/s and the fraction of training time spent waiting for data;
- extract: B5 with random weights at 1520 x 912 on phantom PNGs, our extractor with bfloat16
  autocast and in float32 vs a reference-style loop (hook copying to the host + torch.vstack);
- interventions: the 12 k values x activate/deactivate sweep over 4,000 images' SAE latents
  (2048 -> 16384, 2 classes' rankings): one vectorised call vs the per-k loop.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import write_result

SECTIONS = ("ceiling", "step", "feed", "extract", "interventions")
FULL = {"mm": (4096, 2048, 16384), "step": dict(d_in=2048, n_latents=16384, batch=4096, k=32), "step_iters": 20,
        "feed_gb": 3.0, "feed_sae": (16384, 4096), "extract": dict(n_images=16, height=1520, width=912, arch="b5"),
        "interventions": dict(n_images=4000, grid=(4, 2), d_in=2048, n_latents=16384, batch=250)}
SMOKE = {"mm": (128, 64, 256), "step": dict(d_in=64, n_latents=256, batch=128, k=8), "step_iters": 2,
         "feed_gb": 0.025, "feed_sae": (256, 1024), "extract": dict(n_images=4, height=96, width=64, arch="b2"),
         "interventions": dict(n_images=8, grid=(2, 2), d_in=32, n_latents=256, batch=4)}


def vendor(folder: Path | None) -> list[str]:
    """Put the wheels (and the folder itself) of `folder` on sys.path; the entries added."""
    if folder is None:
        return []
    added = [str(folder), *sorted(str(p) for p in folder.glob("*.whl"))]
    sys.path.extend(added)
    return added


def ceiling(size: dict) -> dict:
    """Measured matmul TFLOP/s in bfloat16 and float32 (precision highest)."""
    from benchmarks.train_step import _matmul_seconds, step_flops

    B, D, S = size["mm"]
    flops = step_flops(D, S, B, 1)["matmul"]
    return {f"{name}_tflops": flops / _matmul_seconds(D, S, B, 10, precision, dtype) / 1e12
            for name, dtype, precision in (("bf16", "bfloat16", "default"), ("fp32", "float32", "highest"))}


def step(size: dict, ceil: dict | None) -> dict:
    """Tokens/s and TFLOP/s of our relu and topk steps and of the eager PyTorch relu and topk steps
    (a step's TFLOP/s counts the work our step needs: the sparse decode for topk)."""
    from benchmarks.train_step import _jax_step_seconds, _torch_step_seconds, step_flops

    s, n = size["step"], size["step_iters"]
    D, S, B, k = s["d_in"], s["n_latents"], s["batch"], s["k"]
    per_kind = step_flops(D, S, B, k)
    flops = {f"{impl}_{kind}": per_kind[kind] for impl in ("jax", "torch") for kind in ("relu", "topk")}
    seconds = {"jax_relu": _jax_step_seconds("relu", D, S, B, k, n, "default"),
               "jax_topk": _jax_step_seconds("topk", D, S, B, k, n, "default")}
    try:
        seconds["torch_relu"] = _torch_step_seconds(D, S, B, n)
        seconds["torch_topk"] = _torch_step_seconds(D, S, B, n, k=k)
    except ImportError as e:
        print(f"step: PyTorch baseline skipped ({e})")
    out = {"shape": s}
    for name, t in seconds.items():
        if t is None:
            continue
        tf = flops[name] / t / 1e12
        out[name] = {"tokens_per_s": B / t, "step_ms": 1e3 * t, "tflops": tf,
                     **({f"of_{c}_ceiling": tf / ceil[f"{c}_tflops"] for c in ("bf16", "fp32")} if ceil else {})}
    for kind in ("relu", "topk"):
        if seconds.get(f"torch_{kind}"):
            out[f"{kind}_jax_over_torch"] = seconds[f"torch_{kind}"] / seconds[f"jax_{kind}"]
    return out


def feed(size: dict, workdir: Path) -> dict:
    """Write a synthetic cache to disk and train one epoch of the SAE from it through the device feed."""
    from benchmarks.cache_read import DIM, GRID, build_cache, train_records
    from cache import open_cache
    from mammosae_jax.training.config import TrainConfig
    from mammosae_jax.training.feed import window_mb

    n_images = max(2, int(size["feed_gb"] * 1e9 / (GRID[0] * GRID[1] * DIM * 2)))
    t0 = time.perf_counter()
    build_cache(workdir / "feed_cache", n_images, shard_size=64)
    write_s = time.perf_counter() - t0
    c = open_cache(workdir / "feed_cache")
    n_latents, batch = size["feed_sae"]
    spe = c.n_tokens() // batch
    tc = TrainConfig(batch_size=batch, epochs=1, val_fraction=0.0, resample_every_epochs=0,
                     log_every=max(1, spe // 4), checkpoint_every=10 * spe)
    recs, wall = train_records(c, workdir / "feed_run", n_latents, tc)
    steady = recs[1:] or recs  # the first record holds the compilations and the first window's read
    return {"images": n_images, "cache_bytes": sum(p.stat().st_size for p in (workdir / "feed_cache").glob("*.h5")),
            "write_s": write_s, "steps": spe, "batch": batch, "n_latents": n_latents, "window_mb": window_mb(tc),
            "train_wall_s": wall, "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
            "data_wait_fraction": max(r["data_wait_fraction"] for r in steady),
            "first_record_data_wait_fraction": recs[0]["data_wait_fraction"]}


def extraction(size: dict, workdir: Path) -> dict:
    """Our extractor (bf16 autocast and fp32) vs the reference-style loop, images/s."""
    from benchmarks.extract import run

    r = run(**size["extract"], batch_size=8, workdir=str(workdir), amp=(True, False))
    return {"device": r["device"], "arch": r["arch"], "images": r["n_images"], "size": f"{r['height']}x{r['width']}",
            **r["ours_images_per_s_by_compute"], "reference_images_per_s": r["reference_images_per_s"],
            "bf16_over_reference": r["ours_images_per_s_by_compute"]["bf16_autocast"] / r["reference_images_per_s"],
            "fp32_over_reference": r["ours_images_per_s_by_compute"]["fp32"] / r["reference_images_per_s"]}


def interventions(size: dict) -> dict:
    """Seconds of the vectorised sweep and of the per-k loop (`benchmarks.interventions`)."""
    from benchmarks.interventions import run

    r = run(**size["interventions"])
    return {"shape": r["shape"], "seconds": r["seconds"], "sweep_speedup": r["ratios"]["sweep_speedup"]["value"],
            "max_metric_difference": r["max_metric_difference"]}


def run(smoke: bool = False, workdir: str | os.PathLike | None = None, only: tuple[str, ...] = SECTIONS,
        vendor_dir: Path | None = None) -> dict:
    """Every section of `only`; a failing or skipped section records its reason instead of numbers."""
    import jax

    size = SMOKE if smoke else FULL
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": smoke,
                    "device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
                    "jax": jax.__version__, "vendored": vendor(vendor_dir), "seconds": {}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        calls = {"ceiling": lambda: ceiling(size), "step": lambda: step(size, result.get("ceiling")),
                 "feed": lambda: feed(size, Path(tmp)), "extract": lambda: extraction(size, Path(tmp)),
                 "interventions": lambda: interventions(size)}
        for name in SECTIONS:
            if name not in only:
                continue
            print(f"[{time.perf_counter() - t_all:6.0f} s] {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                result[name] = calls[name]()
            except ImportError as e:  # e.g. no torch / efficientnet_pytorch on this machine
                result[name] = {"skipped": f"missing dependency: {e}"}
            except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
                traceback.print_exc()
                result[name] = {"error": f"{type(e).__name__}: {e}"}
            result["seconds"][name] = time.perf_counter() - t0
    result["seconds"]["total"] = time.perf_counter() - t_all
    try:
        import torch

        result["torch"] = torch.__version__
        result["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        result["torch"] = None
    return result


def _row(what: str, value: str, vs: str = "") -> tuple[str, str, str]:
    return what, value, vs


def format_table(r: dict) -> str:
    """The one table: what was measured, the number, and what it is compared with (same run)."""
    rows = [("measurement", "value", "compared with (same run, same device)")]

    def gone(name: str) -> bool:
        if name in r and ("skipped" in r[name] or "error" in r[name]):
            rows.append((name, "-", r[name].get("skipped") or r[name]["error"]))
        return name not in r or "skipped" in r[name] or "error" in r[name]

    if not gone("ceiling"):
        c = r["ceiling"]
        rows += [_row("matmul ceiling bf16", f"{c['bf16_tflops']:.3g} TFLOP/s"),
                 _row("matmul ceiling fp32", f"{c['fp32_tflops']:.3g} TFLOP/s")]
    if not gone("step"):
        s = r["step"]
        for name in ("jax_relu", "jax_topk", "torch_relu", "torch_topk"):
            if name in s:
                e = s[name]
                frac = (f"{e['of_bf16_ceiling']:.0%} of bf16, {e['of_fp32_ceiling']:.0%} of fp32 ceiling"
                        if "of_bf16_ceiling" in e else "")
                rows.append(_row(f"SAE step {name} {s['shape']['d_in']}->{s['shape']['n_latents']} "
                                 f"B={s['shape']['batch']}", f"{e['tokens_per_s']:,.0f} tok/s, {e['tflops']:.3g} TFLOP/s",
                                 frac))
        for kind in ("relu", "topk"):
            if f"{kind}_jax_over_torch" in s:
                rows.append(_row(f"{kind} step: jax / torch eager", f"{s[f'{kind}_jax_over_torch']:.2f}x",
                                 "tokens/s ratio"))
    if not gone("feed"):
        f = r["feed"]
        rows.append(_row(f"training from disk, device feed ({f['cache_bytes'] / 1e9:.1f} GB cache)",
                         f"{f['tokens_per_s']:,.0f} tok/s", f"data wait {f['data_wait_fraction']:.1%} of training time"))
    if not gone("extract"):
        e = r["extract"]
        rows += [_row(f"extraction {e['arch']} {e['size']} bf16 autocast", f"{e['bf16_autocast']:.2f} img/s",
                      f"{e['bf16_over_reference']:.2f}x reference loop ({e['reference_images_per_s']:.2f} img/s)"),
                 _row(f"extraction {e['arch']} {e['size']} fp32", f"{e['fp32']:.2f} img/s",
                      f"{e['fp32_over_reference']:.2f}x reference loop")]
    if not gone("interventions"):
        i = r["interventions"]
        sec = i["seconds"]
        rows.append(_row(f"intervention sweep ({i['shape']['interventions']} masks, {i['shape']['n_images']} images)",
                         f"{sec['vectorised_sweep']:.3f} s",
                         f"per-k loop {sec['loop_sweep']:.2f} s ({i['sweep_speedup']:.0f}x)"))
    w = [max(len(row[j]) for row in rows) for j in range(3)]
    lines = ["  ".join(cell.ljust(w[j]) for j, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(0, f"{r['device']} ({r['platform']}), jax {r['jax']}, torch {r.get('torch')}, {r['date']}, "
                    f"{r['seconds']['total']:.0f} s{' (smoke sizes)' if r['smoke'] else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on any device (what the tests run)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections (default: {','.join(SECTIONS)})")
    p.add_argument("--vendor", type=Path, default=None, help="folder of pure-Python wheels to import from")
    p.add_argument("--workdir", type=Path, default=None, help="where the temporary cache and phantoms go")
    p.add_argument("--out", type=Path, default=Path("bench_out/gpu.json"), help="JSON result")
    args = p.parse_args(argv)
    only = tuple(s for s in args.only.split(",") if s)
    bad = [s for s in only if s not in SECTIONS]
    if bad or not only:
        print(f"error: unknown section(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    if args.vendor is not None and not args.vendor.is_dir():
        print(f"error: --vendor {args.vendor} is not a folder", file=sys.stderr)
        return 2
    result = run(args.smoke, args.workdir, only, args.vendor)
    print(format_table(result))
    write_result(args.out, result)
    print(f"written {args.out}")
    return 1 if any("error" in result[s] for s in only if isinstance(result.get(s), dict)) else 0


if __name__ == "__main__":
    sys.exit(main())
