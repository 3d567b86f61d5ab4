"""Top-k intervention sweep: one vectorised call vs the reference's per-k loop, same run.

    python -m benchmarks.interventions [--n-images 16] [--grid 8,6] [--d-in 128] [--n-latents 16384]
                                       [--batch 8] [--out bench_out/interventions.json]

Full paper size: ``--n-images 4000 --grid 48,29 --d-in 2048 --n-latents 16384`` (a GPU; the
``sweep`` comparison keeps every position's latents in memory, so lower --n-images there).

The sweep is the paper's 12 k values x {on, off} = 24 interventions on synthetic features with a
random ReLU SAE and a random linear head. Two comparisons:

* ``sweep``: given the latents of every position (computed once, not timed), the loop decodes
  every position with the mask, pools, applies the head and scores with scikit-learn, per (mode,
  k), as the reference did (its CNN re-run per k is not counted); the vectorised path mean-pools
  the latents and evaluates all 24 masks in one jit/vmap call plus the vectorised metrics.
* ``end_to_end``: from features: the loop re-encodes per (mode, k) (the reference re-ran the whole
  model per k); the vectorised path encodes once (streamed, jit) and then runs the sweep.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from benchmarks.common import write_result
from mammosae_jax.models import sae as sae_lib
from mammosae_jax.analysis.heads import make_head
from mammosae_jax.analysis.interventions import DEFAULT_KS, fold_head_params, k_list, masked_logits, sweep_masks
from mammosae_jax.analysis.metrics import binary_metrics
from mammosae_jax.analysis.ranking import make_ranking


def _timed(fn, repeats: int = 1) -> float:
    """Best wall time of ``fn()`` over ``repeats`` runs (fn must block until its result is ready)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _sklearn_metrics(y: np.ndarray, logit: np.ndarray) -> dict:
    pred = (logit >= 0).astype(int)
    return {"aucroc": roc_auc_score(y, logit), "auprc": average_precision_score(y, logit),
            "precision": precision_score(y, pred, zero_division=0), "recall": recall_score(y, pred, zero_division=0),
            "f1": f1_score(y, pred, zero_division=0)}


def run(n_images: int = 16, grid: tuple[int, int] = (8, 6), d_in: int = 128, n_latents: int = 16384,
        batch: int = 8, seed: int = 0, repeats: int = 1) -> dict:
    """Measure both comparisons; returns timings, speedups and the max metric difference."""
    rng = np.random.default_rng(seed)
    P = grid[0] * grid[1]
    config = sae_lib.SAEConfig(d_in=d_in, n_latents=n_latents, init="tied")
    params = sae_lib.init_params(config, jax.random.key(seed))
    params["b_enc"] = params["b_enc"] - 0.5  # sparse-ish latents
    x_NPd = jnp.asarray(rng.gamma(2.0, 0.5, size=(n_images, P, d_in)).astype(np.float32))
    labels = (rng.random(n_images) < 0.3).astype(int)
    labels[:2] = [0, 1]
    head = make_head(rng.normal(size=(1, d_in)) / np.sqrt(d_in), [0.0], "Mass", ["0", "1"])
    ranking = make_ranking("Mass", rng.normal(size=(2, n_latents)))
    ks = k_list(DEFAULT_KS, n_latents)
    masks_np, modes, kk, _ = sweep_masks(ranking, ks)
    masks = jnp.asarray(masks_np)
    w_KC, b_K = jnp.asarray(head.weight), jnp.asarray(head.bias)
    batches = [slice(s, min(s + batch, n_images)) for s in range(0, n_images, batch)]

    @jax.jit
    def encode_positions(p, x_BPd):
        b = x_BPd.shape[0]
        return sae_lib.encode(config, p, x_BPd.reshape(b * P, d_in)).z.reshape(b, P, n_latents)

    @jax.jit
    def decode_pool_head(p, z_BPn, m_n):
        return sae_lib.decode(config, p, z_BPn * m_n).mean(1) @ w_KC.T + b_K

    @jax.jit
    def encode_decode_pool_head(p, x_BPd, m_n):
        b = x_BPd.shape[0]
        z = sae_lib.encode(config, p, x_BPd.reshape(b * P, d_in)).z * m_n
        return sae_lib.decode(config, p, z).reshape(b, P, d_in).mean(1) @ w_KC.T + b_K

    @jax.jit
    def encode_pool(p, x_BPd):
        return encode_positions(p, x_BPd).mean(1)

    z_all = [encode_positions(params, x_NPd[s]) for s in batches]  # the sweep's given latents
    jax.block_until_ready(z_all)

    def loop_sweep():
        out = []
        for i in range(len(masks_np)):
            logit = jnp.concatenate([decode_pool_head(params, z, masks[i]) for z in z_all])
            out.append(_sklearn_metrics(labels, np.asarray(logit)[:, 0]))
        return out

    def loop_end_to_end():
        out = []
        for i in range(len(masks_np)):
            logit = jnp.concatenate([encode_decode_pool_head(params, x_NPd[s], masks[i]) for s in batches])
            out.append(_sklearn_metrics(labels, np.asarray(logit)[:, 0]))
        return out

    def vectorised_sweep(z_list):
        zbar = jnp.concatenate([z.mean(1) for z in z_list])
        logits = masked_logits(zbar, masks, fold_head_params(params, head))
        return binary_metrics(labels, np.asarray(logits)[..., 0])

    def vectorised_end_to_end():
        zbar = jnp.concatenate([encode_pool(params, x_NPd[s]) for s in batches])
        logits = masked_logits(zbar, masks, fold_head_params(params, head))
        return binary_metrics(labels, np.asarray(logits)[..., 0])

    # Warm-up: compile every function once, outside the timings; compare the results.
    loop_result = loop_sweep()
    vec_result = vectorised_sweep(z_all)
    loop_end_to_end()
    vectorised_end_to_end()
    max_diff = max(abs(loop_result[i][k] - float(getattr(vec_result, k)[i])) for i in range(len(masks_np))
                   for k in loop_result[i])

    t_loop = _timed(loop_sweep, repeats)
    t_vec = _timed(lambda: vectorised_sweep(z_all), repeats)
    t_loop_e2e = _timed(loop_end_to_end, repeats)
    t_vec_e2e = _timed(vectorised_end_to_end, repeats)
    return {
        "device": str(jax.devices()[0]),
        "shape": {"n_images": n_images, "grid": list(grid), "d_in": d_in, "n_latents": n_latents,
                  "interventions": len(masks_np), "ks": list(ks)},
        "seconds": {"loop_sweep": t_loop, "vectorised_sweep": t_vec, "loop_end_to_end": t_loop_e2e,
                    "vectorised_end_to_end": t_vec_e2e},
        "max_metric_difference": max_diff,
        "ratios": {
            "sweep_speedup": {"value": t_loop / t_vec, "target": 100.0, "higher_is_better": True,
                              "what": "24 interventions from given latents: per-k decode->pool->head+sklearn loop / one vmap call"},
            "end_to_end_speedup": {"value": t_loop_e2e / t_vec_e2e, "target": None, "higher_is_better": True,
                                   "what": "from features: re-encode per k loop / encode once + vmap sweep"},
        },
    }


def format_table(result: dict) -> str:
    s = result["seconds"]
    lines = [f"device {result['device']}, shape {result['shape']}",
             f"{'comparison':<12}{'loop (s)':>12}{'vectorised (s)':>16}{'speedup':>10}",
             f"{'sweep':<12}{s['loop_sweep']:>12.4f}{s['vectorised_sweep']:>16.5f}{result['ratios']['sweep_speedup']['value']:>9.0f}x",
             f"{'end_to_end':<12}{s['loop_end_to_end']:>12.4f}{s['vectorised_end_to_end']:>16.5f}"
             f"{result['ratios']['end_to_end_speedup']['value']:>9.0f}x",
             f"max |metric difference| loop vs vectorised: {result['max_metric_difference']:.2e}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.interventions", description=__doc__.split("\n\n")[0])
    p.add_argument("--n-images", type=int, default=16)
    p.add_argument("--grid", default="8,6", help="H,W positions per image (paper: 48,29)")
    p.add_argument("--d-in", type=int, default=128, help="feature dim (paper: 2048)")
    p.add_argument("--n-latents", type=int, default=16384, help="SAE latents (paper: 16384)")
    p.add_argument("--batch", type=int, default=8, help="images per step")
    p.add_argument("--repeats", type=int, default=1, help="timing repeats (best is reported)")
    p.add_argument("--out", default="bench_out/interventions.json")
    a = p.parse_args(argv)
    grid = tuple(int(v) for v in a.grid.split(","))
    result = run(a.n_images, grid, a.d_in, a.n_latents, a.batch, repeats=a.repeats)
    print(format_table(result))
    out = Path(a.out)
    write_result(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
