"""Time SAE weight conversion: reference .pt -> ours -> SAELens safetensors -> ours -> .pt.

`python -m benchmarks.convert_io [--d-in 256] [--n-latents 2048] [--full] [--repeats 3]`
(`--full` = the published size, d_in 2048 x 16,384 latents, 2 x 128 MiB of weights).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Callable


def _best_of(repeats: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run(d_in: int = 256, n_latents: int = 2048, repeats: int = 3) -> dict:
    """Seconds (best of `repeats`) for each load / save, and the safetensors-vs-pt load ratio."""
    import torch

    from mammosae_jax.models.sae_io import load_sae, save_sae

    g = torch.Generator().manual_seed(0)
    tied = torch.randn(1, d_in, generator=g)
    dec = torch.randn(1, d_in, n_latents, generator=g)
    state = {"tied_bias": tied, "pre_encoder_bias._bias_reference": tied,
             "encoder._weight": torch.randn(1, n_latents, d_in, generator=g) * 1e-2,
             "encoder._bias": torch.zeros(1, n_latents),
             "decoder._weight": dec / dec.norm(dim=1, keepdim=True),
             "post_decoder_bias._bias_reference": tied}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        torch.save(state, d / "ref.pt")
        sae = load_sae(d / "ref.pt")
        times = {
            "load_pt_s": _best_of(repeats, lambda: load_sae(d / "ref.pt")),
            "save_safetensors_s": _best_of(repeats, lambda: save_sae(d / "sae.safetensors", sae)),
            "load_safetensors_s": _best_of(repeats, lambda: load_sae(d / "sae.safetensors")),
            "save_pt_s": _best_of(repeats, lambda: save_sae(d / "back.pt", sae)),
        }
    mib = (2 * d_in * n_latents + n_latents + d_in) * 4 / 2**20
    return {
        "d_in": d_in, "n_latents": n_latents, "weights_mib": round(mib, 1), **times,
        "ratios": {"pt_load_over_safetensors_load": {
            "value": times["load_pt_s"] / times["load_safetensors_s"], "target": None,
            "higher_is_better": True, "what": "how much slower the reference .pt loads than our safetensors"}},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d-in", type=int, default=256)
    p.add_argument("--n-latents", type=int, default=2048)
    p.add_argument("--full", action="store_true", help="the published size: 2048 x 16384")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    d_in, n = (2048, 16384) if a.full else (a.d_in, a.n_latents)
    print(json.dumps(run(d_in, n, a.repeats), indent=2))


if __name__ == "__main__":
    main()
