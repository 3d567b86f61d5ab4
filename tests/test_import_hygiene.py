"""Import hygiene: `cache` needs only numpy + h5py; `mammosae_jax` never imports torch nor `extract`.

Each check runs in a fresh interpreter that imports every submodule of the package (found by
walking it, so new modules are covered automatically) and then inspects `sys.modules`.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_IMPORT_ALL = """
import importlib, json, pkgutil, sys
pkg = importlib.import_module({package!r})
failed = {{}}
for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
    try:
        importlib.import_module(info.name)
    except Exception as e:  # reported, not hidden
        failed[info.name] = f"{{type(e).__name__}}: {{e}}"
top = sorted({{name.split(".")[0] for name in sys.modules}})
print(json.dumps({{"failed": failed, "top": top}}))
"""


def _import_everything(package: str) -> dict:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(_IMPORT_ALL.format(package=package))],
                       cwd=REPO, capture_output=True, text=True,
                       env={"JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_cache_imports_only_numpy_h5py_and_the_standard_library():
    res = _import_everything("cache")
    assert res["failed"] == {}
    third_party = set(res["top"]) - set(sys.stdlib_module_names) - {"cache", "numpy", "h5py", "cython_runtime"}
    third_party = {m for m in third_party if not m.startswith("_")}  # interpreter internals
    # (cython_runtime: the module every Cython extension such as h5py registers)
    assert third_party == set(), f"cache pulled in {sorted(third_party)}"
    assert "torch" not in res["top"] and "jax" not in res["top"]


def test_mammosae_jax_never_imports_torch():
    res = _import_everything("mammosae_jax")
    assert res["failed"] == {}
    torchy = [m for m in res["top"] if m.startswith("torch") or m in ("efficientnet_pytorch", "transformers")]
    assert torchy == [], f"importing mammosae_jax pulled in {torchy}"
    assert "extract" not in res["top"], "mammosae_jax imported the PyTorch half's package (extract)"
    assert "jax" in res["top"]  # the walk really imported the JAX modules
