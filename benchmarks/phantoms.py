"""Time the phantom generator on one core, per stage, and our PNG writer against Pillow's.

`python -m benchmarks.phantoms [--n-images 40] [--sizes 1520x912 512x304]`

Throughput is measured with CPU time of this process (``time.process_time``), so it means
"images per second on one core" even on a busy machine; wall time is reported beside it.
The headline ratio is the projected time for 1,000 images at 1520 x 912 (target: 60 s).
"""
from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np


def _stage_times(n_images: int, height: int, width: int) -> dict:
    from extract.phantom_png import encode_png_gray8
    from extract.phantom_render import render
    from extract.phantoms import PhantomConfig, patient_density, plan_breast, plan_view

    config = PhantomConfig(n_images=n_images, seed=0, height=height, width=width)
    cpu = {"plan": 0.0, "render": 0.0, "png": 0.0}
    wall0, n, last = time.perf_counter(), 0, None
    for patient in range(config.n_patients):
        density = patient_density(config, patient)
        for side in (0, 1):
            breast = plan_breast(config, patient, side)
            for view_index in (0, 1):
                t = time.process_time()
                spec = plan_view(config, patient, side, view_index, density, breast)
                cpu["plan"] += time.process_time() - t
                t = time.process_time()
                last = render(spec, height, width).pixels
                cpu["render"] += time.process_time() - t
                t = time.process_time()
                encode_png_gray8(last)
                cpu["png"] += time.process_time() - t
                n += 1
    wall = time.perf_counter() - wall0
    total = sum(cpu.values())
    return {
        "n_images": n,
        "ms_per_image_cpu": {k: 1000 * v / n for k, v in cpu.items()},
        "images_per_s_cpu": n / total,
        "images_per_s_wall": n / wall,
        "last_image": last,
    }


def _png_ratio(img: np.ndarray, repeats: int = 5) -> dict:
    from PIL import Image

    from extract.phantom_png import encode_png_gray8

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t = time.process_time()
            fn()
            times.append(time.process_time() - t)
        return min(times)

    ours = best(lambda: encode_png_gray8(img))
    pil = best(lambda: Image.fromarray(img).save(io.BytesIO(), format="PNG", compress_level=1))
    return {"ours_ms": 1000 * ours, "pillow_level1_ms": 1000 * pil, "speedup": pil / max(ours, 1e-9)}


def run(n_images: int = 40, sizes: tuple[tuple[int, int], ...] = ((1520, 912), (512, 304))) -> dict:
    """Per-size throughput and stage costs; ratios for the run_all table."""
    per_size, ratios, png = {}, {}, None
    for height, width in sizes:
        result = _stage_times(n_images, height, width)
        last = result.pop("last_image")
        per_size[f"{height}x{width}"] = result
        ratios[f"images_per_s_cpu_{height}x{width}"] = {
            "value": result["images_per_s_cpu"], "target": None, "higher_is_better": True,
            "what": f"phantoms per second on one core at {height}x{width}",
        }
        if (height, width) == (1520, 912):
            ratios["seconds_for_1000_at_1520x912"] = {
                "value": 1000 / result["images_per_s_cpu"], "target": 60.0, "higher_is_better": False,
                "what": "projected one-core time for 1,000 phantoms at 1520x912",
            }
            png = _png_ratio(last)
            ratios["png_writer_speedup_vs_pillow"] = {
                "value": png["speedup"], "target": 1.0, "higher_is_better": True,
                "what": "Pillow PNG (compress_level=1) time / ours, one 1520x912 phantom",
            }
    return {"sizes": per_size, "png": png, "ratios": ratios}


def _size(text: str) -> tuple[int, int]:
    h, _, w = text.partition("x")
    try:
        return int(h), int(w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.phantoms", description=__doc__.splitlines()[0])
    p.add_argument("--n-images", type=int, default=40, help="images per size (rounded up to a multiple of 4)")
    p.add_argument("--sizes", type=_size, nargs="+", default=[(1520, 912), (512, 304)], help="HEIGHTxWIDTH ...")
    args = p.parse_args(argv)
    print(json.dumps(run(args.n_images, tuple(args.sizes)), indent=2))


if __name__ == "__main__":
    main()
