"""Read throughput of the feature cache: the device feed and `iter_tokens` vs a plain sequential read vs naive random access.

`python -m benchmarks.cache_read [--gigabytes 0.2] [--window-mb 64] [--out bench_out/cache_read.json] [--workdir DIR]`

Builds a float16 (or `--dtype float32`) cache of real B5-sized maps (48 x 29 x 2048, 5.7 MB per image in float16) in a temporary
folder, then, in the same run and on the same (page-cached) files, measures:
- sequential: every shard file read front to back in 8 MiB blocks (`dd`-style), MB/s of file bytes
  (the one reused block stays in the CPU caches: the baseline of the targets);
- sequential into windows: the same files read front to back into reused window-sized (`window_mb`)
  buffers, i.e. landing in main memory as any window reader's tokens must (no target: the ceiling of
  a reader that keeps whole windows, reported so the feed's ratio can be read against both);
- tokens: one epoch of `iter_tokens(4096, ...)` (shuffled, float32 batches), MB/s of stored
  feature bytes delivered, for epoch 0 (includes the one-time sha256 + NaN checks) and the best
  of the next `repeats` epochs (the sequential read is also the best of `repeats`);
- device feed: one epoch of the training feed (`mammosae_jax.training.feed.DeviceFeed`, batches of
  4096, windows of `window_mb`): stored float16 token bytes delivered per second as float32 batches
  on the (here: CPU) JAX device, each batch materialised (block_until_ready); best of `repeats`;
- data wait: a tiny SAE (2048 -> 256, relu, batch 4096, where the step is cheap) trained for
  `wait_epochs` epochs on the cache through `mammosae_jax.training.loop.train` with the device
  feed: the fraction of training wall time spent waiting for batches, from its metrics log (one
  record per epoch; the first, which holds the compilations, is reported separately);
- naive: a per-token random-access loader (`features[i, h, w]` through h5py, the way a
  map-style token Dataset reads), run for a bounded number of tokens and extrapolated;
- peak resident memory while streaming (Linux VmHWM, reset before the stream).
Targets: device feed >= 70 % of sequential; data wait <= 5 %; peak RSS < 1 GB (`iter_tokens` has no target since
the device feed replaced it for training).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_result

GRID = (48, 29)
DIM = 2048
_MB = 1e6


def _rss_reset() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss_peak_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build_cache(path: Path, n_images: int, shard_size: int, seed: int = 0, dtype: str = "float16") -> None:
    """Write n_images random B5-shaped feature maps (one image at a time: little memory)."""
    from tqdm import tqdm

    from cache import CacheWriter
    rng = np.random.default_rng(seed)
    with CacheWriter(path, grid=GRID, dim=DIM, dtype=dtype, label_names=["Mass"], shard_size=shard_size,
                     encoder={"arch": "synthetic"}, overwrite=True) as w:
        for i in tqdm(range(n_images), desc="build cache", unit="img"):
            x = rng.random((1, *GRID, DIM), dtype=np.float32) * 4.0
            w.add(x, patient_id=[f"p{i // 4}"], image_id=[f"{i}.png"], split=["training"],
                  labels=np.array([[i % 2]]))


def sequential_read(files: list[Path], block: int = 8 << 20, window: int | None = None) -> tuple[int, float, float]:
    """Bytes, wall seconds and CPU seconds to read the files front to back in `block`s; with `window`,
    the blocks fill a reused buffer of that many bytes, the next block going where the last one ended."""
    buf = memoryview(np.zeros(window or block, np.uint8))  # pages touched: no first-touch faults
    n, at, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while True:
                at = 0 if at + block > len(buf) else at
                if not (k := f.readinto(buf[at:at + block])):
                    break
                n, at = n + k, at + k
    return n, time.perf_counter() - t0, time.process_time() - c0


def token_epoch(c, epoch: int, batch_size: int, seed: int, buffer_mb: float, as_stored: bool = False) -> tuple[int, float, float]:
    """Stored feature bytes delivered, wall and CPU seconds (all threads) for one epoch of iter_tokens."""
    n_tok, t0, c0 = 0, time.perf_counter(), time.process_time()
    with c.iter_tokens(batch_size, seed=seed, epoch=epoch, buffer_mb=buffer_mb, as_stored=as_stored) as stream:
        for b in stream:
            n_tok += len(b.tokens)
    return n_tok * c.dim * c.dtype.itemsize, time.perf_counter() - t0, time.process_time() - c0


def device_feed_epoch(c, epoch: int, batch_size: int, seed: int, window_mb: float,
                      batches: bool) -> tuple[int, float, float]:
    """Stored token bytes the device feed delivers in one epoch, wall and CPU seconds: its windows
    on the (first) JAX device, or with `batches` its float32 batches; every array materialised."""
    import jax

    from mammosae_jax.training.feed import DeviceFeed
    from mammosae_jax.training.mesh import make_data_parallel

    dp = make_data_parallel(jax.local_devices()[:1])
    n_tok, t0, c0 = 0, time.perf_counter(), time.process_time()
    feed = DeviceFeed(lambda alloc: c.iter_windows(batch_size, seed, epoch, window_mb=window_mb, alloc=alloc),
                      dp, batch_size, c.dim)
    try:
        for x in feed if batches else feed.device_windows():
            x.block_until_ready()
            n_tok += x.shape[0]
    finally:
        feed.close()
    return n_tok * c.dim * c.dtype.itemsize, time.perf_counter() - t0, time.process_time() - c0


def train_records(c, run: Path, n_latents: int, tc) -> tuple[list[dict], float]:
    """Train a relu SAE of `n_latents` on `c` with `tc` (the device feed by default): its train log
    records (data_wait_fraction, tokens_per_s, ...) and the training wall seconds."""
    from mammosae_jax.models.sae import SAEConfig
    from mammosae_jax.training.loop import train
    from mammosae_jax.training.run_files import MetricsLog

    t0 = time.perf_counter()
    train(c, run, SAEConfig(c.dim, n_latents, l1_coeff=1e-3), tc, progress=False)
    wall = time.perf_counter() - t0
    return [r for r in MetricsLog(run / "metrics.jsonl").read() if r.get("split") == "train"], wall


def tiny_sae_data_wait(c, workdir: Path, epochs: int, batch_size: int, seed: int, window_mb: float) -> dict:
    """Train a tiny SAE on `c` with the device feed; the data-wait fraction of each epoch's log record."""
    from mammosae_jax.training.config import TrainConfig

    spe = c.n_tokens() // batch_size
    tc = TrainConfig(batch_size=batch_size, epochs=epochs, seed=seed, val_fraction=0.0, resample_every_epochs=0,
                     log_every=spe, checkpoint_every=10 * epochs * spe, window_mb=window_mb)
    records, wall = train_records(c, workdir / "tiny_sae", 256, tc)
    waits = [r["data_wait_fraction"] for r in records]
    steady = waits[1:] or waits
    return {"epochs": epochs, "steps": epochs * spe, "wall_s": wall, "per_epoch": waits,
            "first_epoch": waits[0], "steady": max(steady), "tokens_per_s": [r["tokens_per_s"] for r in records]}


def naive_random_access(c, n_tokens: int, seed: int) -> tuple[int, float, float]:
    """Per-token h5py reads in random order (what a map-style token Dataset does)."""
    import h5py
    rng = np.random.default_rng(seed)
    H, W = c.grid
    img = rng.integers(0, len(c), n_tokens)
    pos = rng.integers(0, H * W, n_tokens)
    starts = np.concatenate([[0], np.cumsum([s["n_images"] for s in c.manifest["shards"]])])
    files = [h5py.File(c.path / s["file"], "r") for s in c.manifest["shards"]]
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        for i, p in zip(img, pos):
            k = int(np.searchsorted(starts, i, side="right") - 1)
            _ = files[k]["features"][int(i - starts[k]), p // W, p % W].astype(np.float32)
    finally:
        for f in files:
            f.close()
    return n_tokens * c.dim * c.dtype.itemsize, time.perf_counter() - t0, time.process_time() - c0


def run(gigabytes: float = 0.2, batch_size: int = 4096, shard_size: int = 16, naive_tokens: int = 1000,
        seed: int = 0, repeats: int = 2, buffer_mb: float = 64, window_mb: float = 64, wait_epochs: int = 3,
        dtype: str = "float16",
        workdir: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> dict:
    """Build a cache of about `gigabytes` and measure the three readers; returns the numbers."""
    from cache import open_cache
    image_bytes = GRID[0] * GRID[1] * DIM * np.dtype(dtype).itemsize
    n_images = max(2, int(round(gigabytes * 1e9 / image_bytes)))
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "cache"
        t0 = time.perf_counter()
        build_cache(path, n_images, shard_size, seed, dtype)
        build_s = time.perf_counter() - t0
        c = open_cache(path)
        files = [path / s["file"] for s in c.manifest["shards"]]
        sequential_read(files)  # warm the page cache so that every reader sees the same state
        best = lambda runs: min(runs, key=lambda r: r[1])  # noqa: E731 - best wall time of repeats
        m = {"sequential": best(sequential_read(files) for _ in range(repeats)),
             "sequential_window": best(sequential_read(files, window=int(window_mb * (1 << 20))) for _ in range(repeats))}
        rss_reset = _rss_reset()
        rss_before = _rss_peak_bytes()
        m["tokens_epoch0"] = token_epoch(c, 0, batch_size, seed, buffer_mb)
        m["tokens"] = best(token_epoch(c, e, batch_size, seed, buffer_mb) for e in range(1, 1 + repeats))
        m["tokens_as_stored"] = best(token_epoch(c, e, batch_size, seed, buffer_mb, True) for e in range(1, 1 + repeats))
        m["device_feed"] = best(device_feed_epoch(c, e, batch_size, seed, window_mb, False) for e in range(1, 1 + repeats))
        m["device_batches"] = best(device_feed_epoch(c, e, batch_size, seed, window_mb, True) for e in range(1, 1 + repeats))
        rss_peak = _rss_peak_bytes()
        m["naive"] = naive_random_access(c, naive_tokens, seed)
        wait = tiny_sae_data_wait(c, Path(tmp), wait_epochs, batch_size, seed, window_mb) if wait_epochs else None
        file_bytes = sum(p.stat().st_size for p in files)
    mbps = {k: v[0] / v[1] / _MB for k, v in m.items()}
    seq, tok0, tok1, raw, naive, dev, dev_b = (mbps[k] for k in ("sequential", "tokens_epoch0", "tokens",
                                                                 "tokens_as_stored", "naive", "device_feed",
                                                                 "device_batches"))
    result = {
        "n_images": n_images, "dtype": dtype, "cache_bytes": file_bytes, "batch_size": batch_size, "shard_size": shard_size,
        "build_s": build_s,
        "buffer_mb": buffer_mb, "window_mb": window_mb, "device_feed_MBps": dev,
        "device_batches_MBps": dev_b, "tiny_sae_data_wait": wait,
        "sequential_MBps": seq, "sequential_window_MBps": mbps["sequential_window"], "tokens_epoch0_MBps": tok0, "tokens_MBps": tok1,
        "tokens_as_stored_MBps": raw, "naive_MBps": naive,
        "tokens_per_s": m["tokens"][0] / (DIM * np.dtype(dtype).itemsize) / m["tokens"][1],
        "MB_per_cpu_s": {k: v[0] / v[2] / _MB if v[2] > 0 else None for k, v in m.items()},
        "wall_s": {k: v[1] for k, v in m.items()}, "cpu_s": {k: v[2] for k, v in m.items()},
        "peak_rss_bytes": rss_peak, "rss_before_stream_bytes": rss_before, "rss_peak_reset": rss_reset,
        "ratios": {
            "device_feed_vs_sequential": {"value": dev / seq, "target": 0.7, "higher_is_better": True,
                                          "what": "device feed (float16 windows read, checked and put on the "
                                                  "device, materialised) MB/s / sequential file read MB/s"},
            "device_feed_vs_sequential_window": {"value": dev / mbps["sequential_window"], "target": None,
                                                 "higher_is_better": True,
                                                 "what": "device feed MB/s / sequential read into window-sized "
                                                         "buffers MB/s (the ceiling of a window reader)"},
            "device_batches_vs_sequential": {"value": dev_b / seq, "target": None, "higher_is_better": True,
                                             "what": "as above, each window also shuffled, cast and batched by "
                                                     "the device (here XLA on the CPU) into float32 batches"},
            "tokens_vs_sequential": {"value": tok1 / seq, "target": None, "higher_is_better": True,
                                     "what": "iter_tokens MB/s (after the first epoch) / sequential file read MB/s"},
            "tokens_vs_sequential_first_epoch": {"value": tok0 / seq, "target": None, "higher_is_better": True,
                                                 "what": "as above, epoch 0 (one-time sha256 + NaN checks)"},
            "tokens_as_stored_vs_sequential": {"value": raw / seq, "target": None, "higher_is_better": True,
                                               "what": "as above with as_stored=True (float16 batches, no cast)"},
            "tokens_vs_sequential_cpu": {"value": (m["tokens"][0] / m["tokens"][2]) / (m["sequential"][0] / m["sequential"][2]),
                                         "target": None, "higher_is_better": True,
                                         "what": "MB per CPU-second, tokens / sequential (less sensitive to a busy machine)"},
            "tokens_vs_naive": {"value": tok1 / naive, "target": None, "higher_is_better": True,
                                "what": "iter_tokens MB/s / per-token random-access MB/s"},
            **({"tiny_sae_data_wait": {"value": wait["steady"], "target": 0.05, "higher_is_better": False,
                                       "what": "fraction of a tiny SAE's training time spent waiting for "
                                               "device-feed batches (worst epoch after the first)"}} if wait else {}),
            "peak_rss_GB": {"value": rss_peak / 1e9, "target": 1.0, "higher_is_better": False,
                            "what": "peak resident memory while streaming the epochs"},
        },
    }
    if out is not None:
        write_result(out, result)
    return result


def format_table(r: dict) -> str:
    """The measured rates as a small text table."""
    rows = [("reader", "MB/s", "vs sequential"),
            ("sequential file read (dd-style)", f"{r['sequential_MBps']:.0f}", "1.00"),
            (f"sequential read into {r['window_mb']:g} MiB windows", f"{r['sequential_window_MBps']:.0f}",
             f"{r['sequential_window_MBps'] / r['sequential_MBps']:.2f}"),
            ("device feed: float16 windows on the device", f"{r['device_feed_MBps']:.0f}",
             f"{r['device_feed_MBps'] / r['sequential_MBps']:.2f}"),
            ("device feed + device shuffle/cast into batches", f"{r['device_batches_MBps']:.0f}",
             f"{r['device_batches_MBps'] / r['sequential_MBps']:.2f}"),
            ("iter_tokens, epoch 0 (verifies)", f"{r['tokens_epoch0_MBps']:.0f}",
             f"{r['tokens_epoch0_MBps'] / r['sequential_MBps']:.2f}"),
            ("iter_tokens, later epochs", f"{r['tokens_MBps']:.0f}", f"{r['tokens_MBps'] / r['sequential_MBps']:.2f}"),
            (f"iter_tokens, as_stored ({r['dtype']})", f"{r['tokens_as_stored_MBps']:.0f}",
             f"{r['tokens_as_stored_MBps'] / r['sequential_MBps']:.2f}"),
            ("naive per-token random access", f"{r['naive_MBps']:.1f}", f"{r['naive_MBps'] / r['sequential_MBps']:.4f}")]
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w[i]) if i == 0 else cell.rjust(w[i]) for i, cell in enumerate(row)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    cpu = r["MB_per_cpu_s"]
    lines.append(f"MB per CPU-second: sequential {cpu['sequential']:.0f}, device feed {cpu['device_feed']:.0f}, "
                 f"iter_tokens {cpu['tokens']:.0f}, as_stored {cpu['tokens_as_stored']:.0f}")
    if r["tiny_sae_data_wait"]:
        w = r["tiny_sae_data_wait"]
        lines.append(f"tiny SAE (2048 -> 256) on the device feed: data wait {w['steady']:.1%} of training time "
                     f"(worst epoch after the first; first epoch, with compilation, {w['first_epoch']:.1%}), "
                     f"{w['steps']} steps, {w['tokens_per_s'][-1]:.0f} tokens/s")
    lines.append(f"cache {r['cache_bytes'] / 1e9:.2f} GB {r['dtype']} ({r['n_images']} images), batch {r['batch_size']}, "
                 f"shuffle buffer {r['buffer_mb']:g} MB, device-feed window {r['window_mb']:g} MiB, "
                 f"peak RSS while streaming {r['peak_rss_bytes'] / 1e9:.2f} GB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=0.2, help="cache size to build (default 0.2)")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="cache storage dtype")
    parser.add_argument("--shard-size", type=int, default=16, help="images per shard")
    parser.add_argument("--buffer-mb", type=float, default=64,
                        help="iter_tokens shuffle buffer (default 64, below the cache size so eviction is measured)")
    parser.add_argument("--window-mb", type=float, default=64,
                        help="device-feed window (default 64, below the cache size so double buffering is measured)")
    parser.add_argument("--wait-epochs", type=int, default=3,
                        help="epochs of the tiny-SAE data-wait run (0 skips it; default 3)")
    parser.add_argument("--naive-tokens", type=int, default=1000, help="tokens read by the naive loader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many sequential reads / later epochs")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the temporary cache")
    parser.add_argument("--out", type=Path, default=Path("bench_out/cache_read.json"))
    args = parser.parse_args(argv)
    if (args.gigabytes <= 0 or args.buffer_mb <= 0 or args.window_mb <= 0 or args.wait_epochs < 0
            or min(args.batch_size, args.shard_size, args.naive_tokens, args.repeats) < 1):
        print("error: --gigabytes, --buffer-mb, --window-mb, --batch-size, --shard-size, --naive-tokens and --repeats must be positive",
              file=sys.stderr)
        return 2
    from cache import CacheError
    try:
        result = run(gigabytes=args.gigabytes, batch_size=args.batch_size, shard_size=args.shard_size,
                     naive_tokens=args.naive_tokens, seed=args.seed, repeats=args.repeats, buffer_mb=args.buffer_mb,
                     window_mb=args.window_mb, wait_epochs=args.wait_epochs,
                     dtype=args.dtype, workdir=args.workdir,
                     out=args.out)
    except (CacheError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
