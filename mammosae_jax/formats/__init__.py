"""SAE weight formats, one small module each, all on plain numpy arrays (`SAEWeights`).

- `reference_pt`: the published Mammo-SAE PyTorch state_dict (torch imported only there).
- `saelens`: SAELens-layout safetensors + cfg.json.
- `hub`: fetching the published checkpoint from the Hugging Face Hub.
"""
from mammosae_jax.formats.common import FormatError, SAEWeights

__all__ = ["FormatError", "SAEWeights"]
