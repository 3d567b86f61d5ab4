"""The released reference files in `<repo>/../shared/reference` (not in the repository).

Tests that read them skip where they are absent, except under CI (`CI=true`), where a missing
folder fails the test: a suite that silently skips its reference checks would pass on anything.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"


def require_reference() -> Path:
    """The reference folder; skip (fail under CI) when it is missing."""
    if not REFERENCE.is_dir():
        message = f"released reference files not present at {REFERENCE}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true: the reference checks must run)")
        pytest.skip(message)
    return REFERENCE


def needs_reference(test):
    """Decorator: run `test` only with the reference files (see `require_reference`)."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        require_reference()
        return test(*args, **kwargs)

    return wrapper
