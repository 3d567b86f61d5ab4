"""The Hugging Face Hub: fetch the published checkpoint or a SAELens SAE folder (failing at once
when offline), read a local folder laid out like a Hub repo, write a repo's README."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from mammosae_jax.formats.common import FormatError
from mammosae_jax.formats.saelens import CFG_NAME, WEIGHTS_NAME

HUB_REPO = "KKNakka/MammoSAE"
HUB_FILENAME = "sparse_autoencoder_final.pt"
_HUB_HOST = "huggingface.co"
PROBE_TIMEOUT_S = 3.0


def hub_url(repo: str = HUB_REPO, filename: str = HUB_FILENAME) -> str:
    """The browser download address of ``filename`` in the Hub model repo ``repo``."""
    return f"https://huggingface.co/{repo}/resolve/main/{filename}"


def _offline_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint_host() -> str:
    try:
        from huggingface_hub import constants
        return urlparse(constants.ENDPOINT).hostname or _HUB_HOST
    except Exception:
        return _HUB_HOST


def _reachable(host: str, timeout_s: float) -> bool:
    """True if a TCP connection to host:443 opens within ``timeout_s`` (DNS included)."""
    ok = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection((host, 443), timeout=timeout_s):
                ok.set()
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout_s)
    return ok.is_set()


def _download(repo: str, filename: str, cache_dir: str | os.PathLike | None, where: str) -> Path:
    """``filename`` of Hub repo ``repo`` from the local Hub cache or the network; FormatError saying
    ``where`` to get it otherwise."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise FormatError(f"--from-hub needs the huggingface_hub package, which is not installed; {where}") from None
    if _offline_env() or not _reachable(_endpoint_host(), PROBE_TIMEOUT_S):
        try:  # a copy already in the local Hub cache is fine offline
            return Path(hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir, local_files_only=True))
        except Exception:
            pass
        why = "HF_HUB_OFFLINE is set" if _offline_env() else f"cannot reach {_endpoint_host()} (offline?)"
        raise FormatError(f"{why} and {filename} is not in the local Hub cache; {where}")
    try:
        path = hf_hub_download(repo_id=repo, filename=filename, cache_dir=cache_dir, etag_timeout=10)
    except Exception as e:  # huggingface_hub raises many types (HTTP, auth, not found, timeouts)
        raise FormatError(f"could not download {filename} from {repo}: {type(e).__name__}: {e}; {where}") from None
    return Path(path)


def fetch_from_hub(repo: str = HUB_REPO, filename: str = HUB_FILENAME,
                   cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (or reuse the Hub cache of) ``filename`` from ``repo``; return its local path."""
    where = (f"download {hub_url(repo, filename)} on a machine with network access, copy it here and "
             f"pass its path instead of --from-hub (e.g. `python -m mammosae_jax.convert {filename} DST`)")
    return _download(repo, filename, cache_dir, where)


def _in_repo(folder: str, name: str) -> str:
    return f"{folder.strip('/')}/{name}" if folder.strip("/") else name


def _local_source(root: Path, path: str | None) -> Path:
    """The file or SAELens folder ``path`` names inside the local folder ``root`` (a Hub repo's layout)."""
    target = root / path if path else root
    if not target.exists():
        raise FormatError(f"{target}: no such file or folder in {root}")
    if target.is_file() or (target / CFG_NAME).is_file():
        return target
    saes = sorted(str(p.parent.relative_to(target)) for p in target.rglob(CFG_NAME))
    if len(saes) == 1:
        return target / saes[0]
    listed = ", ".join(saes) if saes else "none"
    raise FormatError(f"{target}: no {CFG_NAME} here; name one of its SAE folders after it (found: {listed})")


def resolve_hub_source(repo_or_dir: str, path: str | None = None,
                       cache_dir: str | os.PathLike | None = None) -> Path:
    """A local path `load_sae` reads, for ``path`` inside a Hub repo or a local folder laid out like one.

    ``path`` is a ``.pt`` / ``.safetensors`` file or a SAELens SAE folder (``cfg.json`` +
    ``sae_weights.safetensors``, what ``SAE.from_pretrained(repo, sae_id)`` reads); None means the
    published checkpoint for the default repo and the repo's root folder otherwise. A local folder
    whose only SAE is in a sub-folder needs no ``path``.
    """
    if Path(repo_or_dir).is_dir():
        return _local_source(Path(repo_or_dir), path)
    if path is None:
        path = HUB_FILENAME if repo_or_dir == HUB_REPO else ""
    suffix = Path(path).suffix.lower()
    if suffix in (".pt", ".pth"):
        return fetch_from_hub(repo_or_dir, path, cache_dir)
    where = (f"or download the SAE folder {path or '(the repo root)'} of {repo_or_dir} with "
             f"`huggingface-cli download {repo_or_dir}` elsewhere, copy it here and pass --from-hub FOLDER")
    if suffix == ".safetensors":
        _download(repo_or_dir, str(Path(path).with_name(CFG_NAME)), cache_dir, where)
        return _download(repo_or_dir, path, cache_dir, where)
    cfg = _download(repo_or_dir, _in_repo(path, CFG_NAME), cache_dir, where)
    _download(repo_or_dir, _in_repo(path, WEIGHTS_NAME), cache_dir, where)
    return cfg.parent


def model_card(sae_id: str, cfg: dict) -> str:
    """README.md of a Hub repo holding one SAELens SAE folder ``sae_id`` (SAELens's own layout)."""
    ours = cfg["metadata"]["mammosae_jax"]["sae_config"]
    return (f"---\nlibrary_name: saelens\ntags:\n- sparse-autoencoder\n- mammosae-jax\n---\n"
            f"# {sae_id}\n\n"
            f"A {ours['variant']} sparse autoencoder (d_in={cfg['d_in']}, d_sae={cfg['d_sae']}, SAELens "
            f"architecture `{cfg['architecture']}`) trained with mammosae-jax; its full config is in "
            f"`{sae_id}/cfg.json` under `metadata.mammosae_jax`.\n\n"
            f"```python\nfrom sae_lens import SAE\nsae = SAE.from_pretrained(\"<repo_id>\", \"{sae_id}\")\n```\n\n"
            f"```\npython -m mammosae_jax.convert --from-hub <repo_id> {sae_id} local/run\n```\n")
