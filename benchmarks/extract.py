"""Extraction throughput: our `extract/dump_features.py` loop vs a loop that reproduces the reference.

    python -m benchmarks.extract [--n-images 16 --height 512 --width 304 --arch b5 --batch-size 8]
                                 [--device auto] [--forward-sizes 1520x912,640x384,512x304]

Both loops use the same random-weight encoder, the same phantom PNGs, the same device, in the same
run. The reference loop (as in Mammo-SAE's dumping script): batch 8, PIL -> RGB -> float32 min-max
-> mean/std in a DataLoader, `model.extract_features`, a forward hook on the encoder's shared
`_swish` module that copies BOTH its outputs (stem, then head) to the host, and `torch.vstack`
accumulation of the head outputs. Ours: the full CLI path (DataLoader workers, pinned memory, one
device->host copy of the head output per batch, HDF5 cache writes). `--forward-sizes` also times
a bare B5 forward per image at the given sizes (to size the demo).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.common import write_result
from extract.dump_features import ExtractConfig, extract, pick_device
from extract.encoder import build_encoder, local_features, reinitialise
from extract.phantoms import PhantomConfig, generate
from cache.vindr import images_from_rows, load_annotations, png_path


class ReferenceDataset(Dataset):
    """The reference's evaluation preprocessing, as it was written there (RGB conversion, numpy)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = np.array(Image.open(self.paths[i]).convert("RGB")).astype("float32")
        img -= img.min()
        img /= img.max()
        img = (img - 0.3089279) / 0.25053555408335154
        return torch.from_numpy(img).permute(2, 0, 1)


def reference_loop(model, paths: list[Path], device: torch.device, workers: int) -> tuple[torch.Tensor, float]:
    """Reference-style dump; returns (head features (N, C, H, W) on the host, seconds)."""
    captured: list[torch.Tensor] = []
    hook = model._swish.register_forward_hook(lambda m, i, o: captured.append(o.detach().cpu()))
    loader = DataLoader(ReferenceDataset(paths), batch_size=8, num_workers=workers, shuffle=False)
    features = None
    start = time.perf_counter()
    try:
        with torch.no_grad():
            for x in loader:
                captured.clear()
                model.extract_features(x.to(device))
                head = captured[1]  # the hook fired twice: stem, then head
                features = head if features is None else torch.vstack([features, head])
        if device.type == "cuda":
            torch.cuda.synchronize()
    finally:
        hook.remove()
    return features, time.perf_counter() - start


def forward_times(arch: str, sizes: list[tuple[int, int]], device: torch.device, batch: int = 1) -> dict:
    """Seconds per image of a bare random-weight forward at each (H, W), after one warm-up pass."""
    model = build_encoder(arch).to(device)
    reinitialise(model, 0)
    out = {}
    with torch.no_grad():
        for h, w in sizes:
            x = torch.randn(batch, 3, h, w, device=device)
            local_features(model, x)  # warm-up (allocations, kernel selection)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            local_features(model, x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            out[f"{h}x{w}"] = (time.perf_counter() - start) / batch
    return out


def run(n_images: int = 16, height: int = 512, width: int = 304, arch: str = "b5", batch_size: int = 8,
        device: str = "auto", num_workers: int | None = None, forward_sizes: tuple[tuple[int, int], ...] = (),
        workdir: str | None = None, amp: tuple[bool, ...] = (False,)) -> dict:
    """Time both loops on the same phantoms (ours once per `amp` setting: bfloat16 autocast or fp32);
    returns raw numbers and `ratios` for run_all (the ratio is of the first setting)."""
    dev = pick_device(device, 0)
    workers = num_workers if num_workers is not None else (min(4, (os.cpu_count() or 1) - 1) if dev.type == "cuda" else 0)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        generate(PhantomConfig(n_images=n_images, seed=0, height=height, width=width), root / "data", progress=False)
        csv, images_dir = root / "data" / "vindr_detection_v1_folds.csv", root / "data" / "images_png"
        images, _ = images_from_rows(load_annotations(csv))
        paths = [png_path(images_dir, r) for r in images.to_dict("records")]
        n = len(paths)
        ours = {bf16: extract(ExtractConfig(csv=csv, images=images_dir, out=root / f"cache_{bf16}",
                                            arch=arch, batch_size=batch_size, device=device, num_workers=workers,
                                            seed=0, dtype="float16", amp=bf16)) for bf16 in amp}
        main = ours[amp[0]]
        model = build_encoder(arch).to(dev)
        reinitialise(model, 0)
        with torch.no_grad():  # warm-up, as ours had its calibration pass
            model.extract_features(torch.zeros(min(8, n), 3, height, width, device=dev))
        features, ref_seconds = reference_loop(model, paths, dev, workers)
    ref_ips = n / ref_seconds
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "arch": arch, "n_images": n, "height": height, "width": width, "batch_size": batch_size,
        "num_workers": workers, "ours_images_per_s": main["images_per_s"], "reference_images_per_s": ref_ips,
        "ours_images_per_s_by_compute": {"bf16_autocast" if k else "fp32": v["images_per_s"] for k, v in ours.items()},
        "reference_feature_shape": list(features.shape),
        "ratios": {"extract_speedup": {"value": main["images_per_s"] / ref_ips, "target": 1.0,
                                       "higher_is_better": True,
                                       "what": f"images/s ours / reference loop ({arch}, {height}x{width}, {n} images)"}},
    }
    if forward_sizes:
        result["forward_s_per_image"] = forward_times(arch, list(forward_sizes), dev)
    return result


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(int(v) for v in s.lower().split("x")) for s in text.split(",") if s)  # type: ignore[misc]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.extract", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-images", type=int, default=16, help="phantom images (multiple of 4; default 16)")
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=304)
    p.add_argument("--arch", choices=["b5", "b2"], default="b5")
    p.add_argument("--batch-size", type=int, default=8, help="our batch size (the reference's is fixed at 8)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers for both loops")
    p.add_argument("--forward-sizes", type=_sizes, default=(), help="also time a bare forward, e.g. 1520x912,512x304")
    p.add_argument("--out", type=Path, default=Path("bench_out/extract.json"), help="JSON results")
    args = p.parse_args(argv)
    result = run(args.n_images, args.height, args.width, args.arch, args.batch_size, args.device,
                 args.num_workers, args.forward_sizes)
    print(f"device: {result['device']}  ({result['arch']}, {result['n_images']} images at "
          f"{result['height']}x{result['width']}, {result['num_workers']} workers)")
    print(f"{'loop':<12}{'images/s':>10}")
    print(f"{'ours':<12}{result['ours_images_per_s']:>10.2f}")
    print(f"{'reference':<12}{result['reference_images_per_s']:>10.2f}")
    print(f"speed-up: {result['ratios']['extract_speedup']['value']:.2f}x")
    for size, seconds in result.get("forward_s_per_image", {}).items():
        print(f"bare {result['arch']} forward at {size}: {seconds:.3f} s/image")
    write_result(args.out, result)
    print(f"written {args.out}")


if __name__ == "__main__":
    sys.exit(main())
