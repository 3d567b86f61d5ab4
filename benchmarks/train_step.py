"""Training-step throughput: our jitted JAX step (relu, topk) vs a PyTorch eager reference step.

`python -m benchmarks.train_step [--preset cpu-small|reference] [--steps N] [--out FILE]`

Measured in one run on one machine: tokens/s of
  * jax relu  : `mammosae_jax.training.step.make_train_step` (loss, decoder-gradient projection,
                Adam, renormalisation; one jitted call, state donated),
  * jax topk  : the same with variant topk (k=32, sparse gather decode; no latent dead yet, so
                the AuxK branch is skipped, the normal state of training),
  * jax topk_auxk: topk with every silent latent dead (AuxK computed every step, worst case),
  * torch relu: the reference step in eager PyTorch (same equations, torch.optim.Adam),
and achieved GFLOP/s ("model FLOPs": 10·B·D·S for a dense relu step = 5 matmuls; forward
encoder 2·B·D·S plus 12·B·k·D gathered terms for topk) over a matmul peak measured in the same run
(float32 (B, D) @ (D, S), jitted). `run(...) -> dict` is what `benchmarks.run_all` calls.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.common import report

PRESETS = {
    "cpu-small": dict(d_in=512, n_latents=4096, batch=1024, k=32),
    "reference": dict(d_in=2048, n_latents=16384, batch=4096, k=32),
}


def _time(fn, steps: int, warmup: int = 2) -> float:
    """Seconds per call of fn() (fn blocks until its result is ready)."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def _jax_step_seconds(variant: str, d_in: int, n_latents: int, batch: int, k: int, steps: int,
                      precision: str, all_dead: bool = False) -> float:
    """Seconds per jitted train step; `all_dead` makes every silent latent dead (AuxK runs each step)."""
    import jax
    import numpy as np

    from mammosae_jax.models.sae import SAEConfig
    from mammosae_jax.training.config import TrainConfig
    from mammosae_jax.training.state import init_state, make_optimizer
    from mammosae_jax.training.step import make_train_step

    config = SAEConfig(d_in, n_latents, variant=variant, k=None if variant == "relu" else k, init="tied")
    tc = TrainConfig(lr=5e-4, batch_size=batch, steps=1, dead_after_tokens=batch if all_dead else 10_000_000)
    x = jax.device_put(np.random.default_rng(0).normal(size=(batch, d_in)).astype(np.float32) + 0.5)
    state = init_state(config, make_optimizer(tc), jax.random.key(0))
    if all_dead:
        state = state._replace(steps_since_fired=state.steps_since_fired + 10**6)
    holder = {"state": state}
    with jax.default_matmul_precision(precision):
        step = make_train_step(config, tc)

        def one():
            holder["state"], metrics = step(holder["state"], x)
            metrics.loss.block_until_ready()

        return _time(one, steps)


def step_flops(d_in: int, n_latents: int, batch: int, k: int) -> dict[str, int]:
    """FLOPs of one training step (relu: dense encode, decode and their gradients; topk: dense
    encode, the k-sparse decode and gradients) and of the (batch, d_in) @ (d_in, n_latents) matmul."""
    B, D, S = batch, d_in, n_latents
    return {"relu": 10 * B * D * S, "topk": 2 * B * D * S + 12 * B * k * D, "matmul": 2 * B * D * S}


def _matmul_seconds(d_in: int, n_latents: int, batch: int, steps: int, precision: str, dtype: str = "float32") -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (batch, d_in), dtype)
    b = jax.random.normal(jax.random.key(1), (d_in, n_latents), dtype)
    with jax.default_matmul_precision(precision):
        mm = jax.jit(jnp.matmul)
        return _time(lambda: mm(a, b).block_until_ready(), steps)


def _torch_step_seconds(d_in: int, n_latents: int, batch: int, steps: int, l1: float = 3e-5,
                        k: int | None = None) -> float:
    """The reference step in eager PyTorch (SPEC §3; PyTorch layouts: W_dec columns are the vectors);
    with `k`, the TopK step as eager PyTorch SAEs write it (torch.topk, scatter into a dense code,
    dense decode, MSE only)."""
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    W_dec = torch.randn(d_in, n_latents, generator=g)
    W_dec = (W_dec / W_dec.norm(dim=0, keepdim=True)).to(dev).requires_grad_()
    W_enc = W_dec.detach().T.clone().requires_grad_()
    b_enc = torch.zeros(n_latents, device=dev, requires_grad=True)
    b = torch.zeros(d_in, device=dev, requires_grad=True)
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b], lr=5e-4, betas=(0.9, 0.999), eps=1e-8)
    x = (torch.randn(batch, d_in, generator=g) + 0.5).to(dev)

    def one():
        pre = (x - b) @ W_enc.T + b_enc
        if k is None:
            z = torch.relu(pre)
        else:
            top = torch.topk(pre, k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        x_hat = z @ W_dec.T + b
        loss = ((x_hat - x) ** 2).mean(-1).mean() + (0.0 if k is not None else l1 * z.abs().sum(-1).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            unit = W_dec / W_dec.norm(dim=0, keepdim=True)
            W_dec.grad -= (W_dec.grad * unit).sum(0, keepdim=True) * unit
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=0, keepdim=True))
        if dev == "cuda":
            torch.cuda.synchronize()

    return _time(one, steps)


def run(preset: str = "cpu-small", steps: int | None = None, precision: str = "highest",
        torch_baseline: bool = True) -> dict:
    """Measure everything for one preset; return raw numbers and `ratios` (benchmarks.run_all)."""
    import jax

    shape = PRESETS[preset]
    D, S, B, k = shape["d_in"], shape["n_latents"], shape["batch"], shape["k"]
    steps = steps or (5 if preset == "cpu-small" else 20)
    flops = step_flops(D, S, B, k)
    relu_flops, topk_flops, mm_flops = flops["relu"], flops["topk"], flops["matmul"]
    t_mm = _matmul_seconds(D, S, B, steps, precision)
    t_relu = _jax_step_seconds("relu", D, S, B, k, steps, precision)
    t_topk = _jax_step_seconds("topk", D, S, B, k, steps, precision)
    t_auxk = _jax_step_seconds("topk", D, S, B, k, steps, precision, all_dead=True)
    t_torch = _torch_step_seconds(D, S, B, steps) if torch_baseline else float("nan")
    peak = mm_flops / t_mm / 1e9
    result = {
        "preset": preset, "shape": shape, "steps": steps, "matmul_precision": precision,
        "device": str(jax.devices()[0]),
        "tokens_per_s": {"jax_relu": B / t_relu, "jax_topk": B / t_topk, "jax_topk_auxk": B / t_auxk,
                         "torch_relu": B / t_torch},
        "step_ms": {"jax_relu": 1e3 * t_relu, "jax_topk": 1e3 * t_topk, "jax_topk_auxk": 1e3 * t_auxk,
                    "torch_relu": 1e3 * t_torch},
        "gflops": {"matmul_peak": peak, "jax_relu": relu_flops / t_relu / 1e9,
                   "jax_topk": topk_flops / t_topk / 1e9, "jax_topk_auxk": topk_flops / t_auxk / 1e9,
                   "torch_relu": relu_flops / t_torch / 1e9},
    }
    on_gpu = jax.devices()[0].platform == "gpu"
    result["ratios"] = {
        "relu_jax_over_torch": {"value": t_torch / t_relu, "target": 1.0, "higher_is_better": True,
                                "what": "tokens/s of our jitted relu step / PyTorch eager reference step"},
        "topk_over_relu": {"value": t_relu / t_topk, "target": 1.5, "higher_is_better": True,
                           "what": "tokens/s of topk (k=32) / dense relu, same width"},
        "relu_fraction_of_matmul_peak": {"value": result["gflops"]["jax_relu"] / peak,
                                         "target": 0.5 if on_gpu else None, "higher_is_better": True,
                                         "what": "achieved GFLOP/s of the relu step / measured matmul peak"},
    }
    return result


def format_table(result: dict) -> str:
    rows = [("step", "tokens/s", "ms/step", "GFLOP/s", "of peak")]
    peak = result["gflops"]["matmul_peak"]
    for name in ("jax_relu", "jax_topk", "jax_topk_auxk", "torch_relu"):
        rows.append((name, f"{result['tokens_per_s'][name]:,.0f}", f"{result['step_ms'][name]:.1f}",
                     f"{result['gflops'][name]:.1f}", f"{result['gflops'][name] / peak:.0%}"))
    rows.append(("matmul peak", "", "", f"{peak:.1f}", "100%"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu-small",
                   help="cpu-small: 512->4096, batch 1024 (default); reference: 2048->16384, batch 4096")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement (default 5 / 20)")
    p.add_argument("--precision", default="highest", choices=["highest", "high", "default", "bfloat16",
                                                              "tensorfloat32"],
                   help="jax matmul precision (GPU: 'tensorfloat32' for TF32; default highest = fp32)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    result = run(args.preset, args.steps, args.precision, not args.no_torch)
    print(f"{args.preset} {result['shape']} on {result['device']}, precision {args.precision}")
    return report(result, format_table(result), args.out)


if __name__ == "__main__":
    sys.exit(main())
