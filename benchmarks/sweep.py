"""N SAEs stacked in one sweep vs N sequential single runs over the same cache, in one process.

`python -m benchmarks.sweep [--members 4] [--images 64] [--dim 64] [--expansion 4] [--epochs 3] [--out FILE]`

Builds a synthetic float16 cache, then trains N relu SAEs (same width, N l1 coefficients):
  * stacked   : `mammosae_jax.training.sweep_loop.train_sweep` (one pass over the cache, one
                vmap-ed step per batch for all N),
  * sequential: `mammosae_jax.training.loop.train` once per member (N passes).
Measured: wall seconds (compilation included, both sides); cache bytes read (every feature-map
byte the cache reader returned, counted by wrapping `FeatureCache.read_run` for the benchmark);
and, for reference, `rchar` of /proc/self/io (every read syscall of the process, page-cache hits
and lazily imported modules included; None off Linux). The stacked run goes first, so it
alone pays for a cold page cache and for compiling the validation function they share. The
sequential runs also write one orbax checkpoint each (the sweep writes none).
`run(...) -> dict` is what `benchmarks.run_all` calls.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import report

GRID = (8, 8)


def _rchar() -> int | None:
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _write_cache(path: Path, n_images: int, dim: int, seed: int = 0) -> Path:
    import numpy as np

    from cache import CacheWriter

    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(4 * dim, dim)).astype(np.float32) / np.sqrt(dim)
    with CacheWriter(path, grid=GRID, dim=dim, dtype="float16", label_names=["Mass"], shard_size=32) as w:
        for start in range(0, n_images, 32):
            n = min(32, n_images - start)
            codes = rng.exponential(size=(n, *GRID, 4 * dim)) * (rng.random((n, *GRID, 4 * dim)) < 0.05)
            maps = (codes @ atoms + 0.3).astype(np.float32)
            ids = range(start, start + n)
            w.add(maps, patient_id=[f"p{i // 2:04d}" for i in ids], image_id=[f"img{i:05d}.png" for i in ids],
                  split=["training"] * n, labels=np.zeros((n, 1), np.int64))
    return path


class _ReadCounter:
    """Counts the bytes `FeatureCache.read_run` returns while installed (a class-level wrapper)."""

    def __init__(self, cache_class):
        self.cls, self.original, self.bytes = cache_class, cache_class.read_run, 0

    def __enter__(self):
        original = self.original

        def counting(cache, run, out=None):
            arr = original(cache, run, out)
            self.bytes += arr.nbytes
            return arr

        self.cls.read_run = counting
        return self

    def __exit__(self, *exc):
        self.cls.read_run = self.original


def _measure(fn, cache_class):
    before, t0 = _rchar(), time.perf_counter()
    with _ReadCounter(cache_class) as counter:
        out = fn()
    seconds, after = time.perf_counter() - t0, _rchar()
    rchar = (after - before) if before is not None and after is not None else None
    return out, seconds, counter.bytes, rchar


def run(members: int = 4, images: int = 64, dim: int = 64, expansion: int = 4, epochs: int = 3,
        batch_size: int = 256, workdir: str | None = None) -> dict:
    """Build the cache, time both ways; returns raw numbers and `ratios`."""
    import jax

    import cache as cache_lib
    from mammosae_jax.models.sae import SAEConfig
    from mammosae_jax.training.config import TrainConfig
    from mammosae_jax.training.loop import train
    from mammosae_jax.training.stacked import Member
    from mammosae_jax.training.sweep_loop import train_sweep

    l1s = [1e-4 * 3 ** i for i in range(members)]
    sweep_members = [Member(f"l1_{l1:.2g}", SAEConfig(dim, expansion * dim, l1_coeff=l1),
                            5e-4) for l1 in l1s]
    tc = TrainConfig(lr=5e-4, batch_size=batch_size, epochs=epochs, val_fraction=0.1, val_max_tokens=4 * batch_size,
                     resample_every_epochs=0, log_every=50, checkpoint_every=10**9)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        feats = cache_lib.open_cache(_write_cache(Path(tmp) / "cache", images, dim))
        stacked, t_stack, b_stack, r_stack = _measure(
            lambda: train_sweep(feats, Path(tmp) / "sweep", sweep_members, tc, progress=False), type(feats))
        seq_results, t_seq, b_seq, r_seq = _measure(lambda: [
            train(feats, Path(tmp) / f"single_{m.name}", m.config, m.train_config(tc), progress=False)
            for m in sweep_members], type(feats))
        cache_bytes = sum(p.stat().st_size for p in (Path(tmp) / "cache").rglob("*.h5"))
    n_val = [v.fvu for v in stacked.val if v is not None]
    result = {
        "device": str(jax.devices()[0]), "n_devices": jax.device_count(),
        "members": members, "images": images, "dim": dim, "n_latents": expansion * dim, "epochs": epochs,
        "batch_size": batch_size, "steps": stacked.steps, "cache_bytes": cache_bytes,
        "seconds": {"stacked": t_stack, "sequential": t_seq},
        "cache_bytes_read": {"stacked": b_stack, "sequential": b_seq},
        "rchar_bytes": {"stacked": r_stack, "sequential": r_seq},
        "train_feature_bytes": {"stacked": stacked.data.feature_bytes},
        "val_fvu_stacked": n_val,
        "val_fvu_sequential": [r.val.fvu for r in seq_results if r.val is not None],
    }
    ratios = {
        "wall_speedup": {"value": t_seq / t_stack, "target": 1.5, "higher_is_better": True,
                         "what": f"wall s of {members} sequential single runs / one stacked sweep (compile included)"},
    }
    ratios["read_reduction"] = {"value": b_seq / max(b_stack, 1), "target": 0.9 * members, "higher_is_better": True,
                                "what": f"cache bytes read by {members} sequential runs / one stacked sweep"}
    result["ratios"] = ratios
    return result


def format_table(r: dict) -> str:
    rows = [("way", "wall s", "cache MB read", "MB read (rchar)")]
    for way in ("stacked", "sequential"):
        b = r["rchar_bytes"][way]
        rows.append((way, f"{r['seconds'][way]:.2f}", f"{r['cache_bytes_read'][way] / 1e6:.1f}",
                     "-" if b is None else f"{b / 1e6:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=4, help="SAEs in the sweep (default 4)")
    p.add_argument("--images", type=int, default=64, help="cache images, 8x8 positions each (default 64)")
    p.add_argument("--dim", type=int, default=64, help="feature dim (default 64; the real cache: 2048)")
    p.add_argument("--expansion", type=int, default=4, help="n_latents = expansion x dim (default 4)")
    p.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    p.add_argument("--batch-size", type=int, default=256, help="tokens per batch (default 256)")
    p.add_argument("--workdir", default=None, help="where to build the temporary cache (default: system temp)")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if min(args.members, args.images, args.dim, args.expansion, args.epochs, args.batch_size) < 1:
        print("error: --members, --images, --dim, --expansion, --epochs and --batch-size must be positive",
              file=sys.stderr)
        return 2
    result = run(args.members, args.images, args.dim, args.expansion, args.epochs, args.batch_size, args.workdir)
    print(f"{result['members']} relu SAEs {result['dim']}->{result['n_latents']}, {result['steps']} steps of "
          f"{result['batch_size']} tokens, cache {result['cache_bytes'] / 1e6:.1f} MB, on {result['device']}")
    return report(result, format_table(result), args.out)


if __name__ == "__main__":
    sys.exit(main())
