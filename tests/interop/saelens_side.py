"""The SAELens half of the interop tests; runs in the separate venv that has the real `sae-lens`.

    python saelens_side.py JOB.json

JOB = {"x": "x.npy", "load": {"name": "folder", ...}, "make": "folder", "out": "out_folder",
       "jumprelu_grads": {"params": "p.safetensors", "l0_coefficient": λ, "bandwidth": ε}}:
every "load" folder is opened with `SAE.load_from_disk` and its `encode` / `decode` of x saved as
out/name.npz (+ out/name.json: class, metadata); with "make", SAELens's own SAEs with random
weights of each architecture are written there with `save_model`, with their outputs on x; with
"jumprelu_grads", `JumpReLUTrainingSAE`'s training loss on x and its gradients go to
out/jumprelu_grads.npz.
Imports only numpy, torch and sae_lens (not mammosae_jax).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import sae_lens
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig

D, N = 16, 48


def _outputs(sae, x: np.ndarray, out: Path, name: str) -> None:
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x))
        x_hat = sae.decode(z)
    np.savez(out / f"{name}.npz", z=z.numpy(), x_hat=x_hat.numpy())
    meta = sae.cfg.metadata.to_dict()
    (out / f"{name}.json").write_text(json.dumps({"class": type(sae).__name__, "metadata": meta,
                                                  "sae_lens": sae_lens.__version__}, default=str))


def _random(sae, seed: int, threshold: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(D, N, generator=g) * 0.4)
        sae.b_enc.copy_(torch.randn(N, generator=g) * 0.1)
        norms = 0.5 + torch.rand(N, 1, generator=g)  # decoder rows off unit norm on purpose
        W = torch.randn(N, D, generator=g)
        sae.W_dec.copy_(W / W.norm(dim=1, keepdim=True) * norms)
        sae.b_dec.copy_(torch.randn(D, generator=g) * 0.2)
        if threshold:
            sae.threshold.copy_(torch.rand(N, generator=g) * 0.6)


MADE = {  # name: (class, config kwargs)
    "standard": (StandardSAE, StandardSAEConfig, {}),
    "standard_no_b_dec_in": (StandardSAE, StandardSAEConfig, {"apply_b_dec_to_input": False}),
    "topk": (TopKSAE, TopKSAEConfig, {"k": 5}),
    "topk_rescaled": (TopKSAE, TopKSAEConfig, {"k": 5, "rescale_acts_by_decoder_norm": True}),
    "topk_rescaled_no_b_dec_in": (TopKSAE, TopKSAEConfig, {"k": 5, "rescale_acts_by_decoder_norm": True,
                                                           "apply_b_dec_to_input": False}),
    "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig, {}),
    "jumprelu_no_b_dec_in": (JumpReLUSAE, JumpReLUSAEConfig, {"apply_b_dec_to_input": False}),
}


def _jumprelu_grads(spec: dict, x: np.ndarray, out: Path) -> None:
    from safetensors.torch import load_file
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    params = load_file(spec["params"])
    d_in, d_sae = params["W_enc"].shape
    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, jumprelu_bandwidth=spec["bandwidth"],
                                                        l0_coefficient=spec["l0_coefficient"]))
    with torch.no_grad():
        for name, value in params.items():
            getattr(sae, name).copy_(value)
    step = sae.training_forward_pass(TrainStepInput(sae_in=torch.from_numpy(x), coefficients={"l0": spec["l0_coefficient"]},
                                                    dead_neuron_mask=None, n_training_steps=0, is_logging_step=False))
    step.loss.backward()
    np.savez(out / "jumprelu_grads.npz", loss=step.loss.detach().numpy(),
             **{f"grad_{n}": getattr(sae, n).grad.numpy() for n in params})


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    x = np.load(job["x"]).astype(np.float32)
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    for name, folder in job.get("load", {}).items():
        _outputs(SAE.load_from_disk(folder), x, out, name)
    if job.get("make"):
        for seed, (name, (cls, cfg_cls, kw)) in enumerate(MADE.items()):
            sae = cls(cfg_cls(d_in=D, d_sae=N, **kw))
            _random(sae, seed, threshold=cls is JumpReLUSAE)
            sae.save_model(Path(job["make"]) / name)
            _outputs(sae, x, out, name)
    if job.get("jumprelu_grads"):
        _jumprelu_grads(job["jumprelu_grads"], x, out)


if __name__ == "__main__":
    main(sys.argv[1])
