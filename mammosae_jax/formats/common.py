"""What every SAE weight format shares: the plain-numpy weights, the error type, atomic writes."""
from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from cache.atomic import atomic_path  # noqa: F401 - re-exported for the format modules

#: Largest tolerated deviation of a decoder dictionary vector's L2 norm from 1.
UNIT_NORM_TOL = 1e-3


class FormatError(ValueError):
    """A weight file is missing, unreadable, or does not match its format; the message says why."""


class SAEWeights(NamedTuple):
    """SAE parameters as float32 numpy arrays, in our (Flax) layout.

    ``z = act((x - b_dec) @ W_enc + b_enc)``, ``x_hat = z @ W_dec + b_dec``; a JumpReLU SAE also
    has its per-latent ``threshold``.
    """

    W_enc: np.ndarray  # [d_in, n_latents]
    b_enc: np.ndarray  # [n_latents]
    W_dec: np.ndarray  # [n_latents, d_in]
    b_dec: np.ndarray  # [d_in]
    threshold: np.ndarray | None = None  # [n_latents] (jumprelu only)

    def present(self) -> dict[str, np.ndarray]:
        """The arrays by name, without an absent threshold."""
        return {k: v for k, v in self._asdict().items() if v is not None}

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def n_latents(self) -> int:
        return int(self.W_enc.shape[1])


def validate_weights(w: SAEWeights, source: str) -> SAEWeights:
    """Check shapes, dtype and finiteness; return contiguous float32 copies. Errors name the array."""
    arrays = {name: np.asarray(a) for name, a in w.present().items()}
    for name, a in arrays.items():
        if not np.issubdtype(a.dtype, np.floating):
            raise FormatError(f"{source}: '{name}' has dtype {a.dtype}, expected a float type")
    if arrays["W_enc"].ndim != 2:
        raise FormatError(f"{source}: 'W_enc' has shape {arrays['W_enc'].shape}, expected [d_in, n_latents]")
    d_in, n = arrays["W_enc"].shape
    expected = {"W_enc": (d_in, n), "b_enc": (n,), "W_dec": (n, d_in), "b_dec": (d_in,), "threshold": (n,)}
    for name, shape in ((k, v) for k, v in expected.items() if k in arrays):
        if arrays[name].shape != shape:
            raise FormatError(
                f"{source}: '{name}' has shape {arrays[name].shape}, expected {shape} "
                f"(d_in={d_in}, n_latents={n} from W_enc)"
            )
    out = {}
    for name, a in arrays.items():
        a32 = np.ascontiguousarray(a, dtype=np.float32)
        if not np.isfinite(a32).all():
            raise FormatError(f"{source}: '{name}' contains NaN or infinite values")
        out[name] = a32
    return SAEWeights(**out)


def warn_if_not_unit_norm(W_dec_ND: np.ndarray, source: str, tol: float = UNIT_NORM_TOL) -> None:
    """Warn when any decoder dictionary vector (row of W_dec [n, d_in]) is off unit norm by > tol."""
    norms_N = np.linalg.norm(W_dec_ND, axis=1).astype(np.float64)  # float32 sums: ~1e-6 relative
    off_N = np.abs(norms_N - 1.0)
    if off_N.size and off_N.max() > tol:
        worst = int(off_N.argmax())
        warnings.warn(
            f"{source}: {int((off_N > tol).sum())} of {off_N.size} decoder vectors are off unit norm "
            f"by more than {tol:g} (worst: latent {worst}, norm {norms_N[worst]:.6g})",
            UserWarning,
            stacklevel=3,
        )

