"""Convert an SAE between the reference .pt, SAELens safetensors and run folders (`convert`).
The command is `mammosae_jax.cli.convert`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from mammosae_jax.formats.common import FormatError

if TYPE_CHECKING:  # pragma: no cover
    from mammosae_jax.models.sae_io import SAE


def _targets(dst: Path) -> list[Path]:
    """The files that writing ``dst`` creates or replaces."""
    from mammosae_jax.formats.saelens import cfg_path_for
    from mammosae_jax.models.sae_io import RUN_WEIGHTS, detect_format

    fmt = detect_format(dst, for_writing=True)
    if fmt == "pt":
        return [dst]
    weights = dst / RUN_WEIGHTS if fmt == "run" else dst
    return [weights, cfg_path_for(weights)]


class Converted(NamedTuple):
    path: Path  # the weights file written
    sae: SAE  # what was loaded (and written)


def convert(src: str | Path, dst: str | Path, *, force: bool = False) -> Converted:
    """Load ``src`` and save it as ``dst`` (refusing to overwrite unless ``force``)."""
    from mammosae_jax.models.sae_io import load_sae, save_sae

    dst = Path(dst)
    existing = [p for p in _targets(dst) if p.exists()]
    if existing and not force:
        raise FormatError(f"{existing[0]} exists; pass --force to overwrite it")
    sae = load_sae(src)
    return Converted(save_sae(dst, sae), sae)
