"""Convert an SAE between the reference .pt, SAELens safetensors and run folders (`convert`).
The command is `mammosae_jax.cli.convert`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from mammosae_jax.formats.common import FormatError

if TYPE_CHECKING:  # pragma: no cover
    from mammosae_jax.models.sae_io import SAE


HUB_README = "README.md"


def _targets(dst: Path, hub_sae_id: str | None = None) -> list[Path]:
    """The files that writing ``dst`` creates or replaces."""
    from mammosae_jax.formats.saelens import cfg_path_for
    from mammosae_jax.models.sae_io import RUN_WEIGHTS, detect_format

    if hub_sae_id is not None:
        return [dst / HUB_README, *_targets(dst / hub_sae_id)]
    fmt = detect_format(dst, for_writing=True)
    if fmt == "pt":
        return [dst]
    weights = dst / RUN_WEIGHTS if fmt == "run" else dst
    return [weights, cfg_path_for(weights)]


class Converted(NamedTuple):
    path: Path  # the weights file written
    sae: SAE  # what was loaded (and written)


def convert(src: str | Path, dst: str | Path, *, force: bool = False, hub_sae_id: str | None = None) -> Converted:
    """Load ``src`` and save it as ``dst`` (refusing to overwrite unless ``force``).

    With ``hub_sae_id``, ``dst`` becomes a folder ready to upload as a Hub repo laid out as SAELens's
    are: ``README.md`` + ``{hub_sae_id}/cfg.json`` + ``{hub_sae_id}/sae_weights.safetensors``.
    """
    from cache.atomic import write_text_atomic
    from mammosae_jax.formats.hub import model_card
    from mammosae_jax.formats.saelens import saelens_cfg
    from mammosae_jax.models.sae_io import load_sae, save_sae

    dst = Path(dst)
    if hub_sae_id is not None and (dst.suffix or not hub_sae_id.strip("/") or Path(hub_sae_id).suffix):
        raise FormatError(f"--to-hub writes a folder: DST ({dst}) and the SAE id ({hub_sae_id!r}) must be folder names")
    existing = [p for p in _targets(dst, hub_sae_id) if p.exists()]
    if existing and not force:
        raise FormatError(f"{existing[0]} exists; pass --force to overwrite it")
    sae = load_sae(src)
    if hub_sae_id is None:
        return Converted(save_sae(dst, sae), sae)
    written = save_sae(dst / hub_sae_id, sae)
    write_text_atomic(dst / HUB_README, model_card(hub_sae_id, saelens_cfg(sae.config.to_dict())))
    return Converted(written, sae)
