"""Fetch the published checkpoint from the Hugging Face Hub, failing at once when offline."""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from mammosae_jax.formats.common import FormatError

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


def fetch_from_hub(repo: str = HUB_REPO, filename: str = HUB_FILENAME,
                   cache_dir: str | os.PathLike | None = None) -> Path:
    """Download (or reuse the Hub cache of) ``filename`` from ``repo``; return its local path."""
    where = (f"download {hub_url(repo, filename)} on a machine with network access, copy it here and "
             f"pass its path instead of --from-hub (e.g. `python -m mammosae_jax.convert {filename} DST`)")
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
