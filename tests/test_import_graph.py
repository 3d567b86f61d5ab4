"""The import graph of the three packages, read from the source (every import, lazy ones included).

Floors: `cache` (numpy) <- `extract` (torch) and `mammosae_jax` (jax); inside `mammosae_jax`,
`models` <- `training`, `analysis` <- `viz` <- `demo` <- `cli`. Checked: no circle, nothing imports
a command module, `mammosae_jax` never imports `extract`, `models.core` is a leaf, no module is
over 400 lines.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("cache", "extract", "mammosae_jax")
MAX_LINES = 400
SHIMS = {f"mammosae_jax.{c}" for c in ("train", "sweep", "convert", "fit_head", "evaluate", "concepts", "intervene",
                                       "visualize", "name_latents")} | {"mammosae_jax.__main__", "mammosae_jax.demo.__main__",
                                                              "mammosae_jax.dashboard.__main__"}
"""`python -m mammosae_jax.<command>` entry points: each only forwards to its `mammosae_jax.cli` module."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports (`from x import y` counts y when y is a module)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _is_command(module: str) -> bool:
    return module.startswith("mammosae_jax.cli.") and module != "mammosae_jax.cli.options"


def test_no_import_circle(graph):
    # a package's __init__ importing its own submodules is not a circle of the code itself
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_no_module_imports_a_command(graph):
    offenders = {m: sorted(t for t in ts if _is_command(t)) for m, ts in graph.items()
                 if m not in SHIMS and m != "mammosae_jax.cli"}
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_mammosae_jax_never_imports_extract(graph):
    offenders = {m: sorted(t for t in ts if t.split(".")[0] == "extract")
                 for m, ts in graph.items() if m.startswith("mammosae_jax")}
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_models_core_is_a_leaf_and_variants_do_not_import_the_sae(graph):
    assert {t for t in graph["mammosae_jax.models.core"] if t.startswith("mammosae_jax")} == set()
    for m, ts in graph.items():
        if m.startswith("mammosae_jax.models.variants"):
            assert "mammosae_jax.models.sae" not in ts, m


def test_shims_only_forward_to_their_command():
    for shim in SHIMS:
        path = REPO / (shim.replace(".", "/") + ".py")
        assert len(path.read_text().splitlines()) <= 8, f"{path} is more than a forwarding shim"


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(REPO)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    allowed = {"extract/phantom_render.py"}  # 414 lines: about 400
    assert set(long) <= allowed, f"modules over {MAX_LINES} lines: {long}"


def test_every_documented_python_m_command_runs(monkeypatch, capsys):
    """`python -m mammosae_jax.<command> --help` works for every command (the shims forward correctly)."""
    import runpy

    from mammosae_jax.cli import COMMANDS

    for command in COMMANDS:
        monkeypatch.setattr(sys, "argv", [f"mammosae_jax.{command}", "--help"])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_module(f"mammosae_jax.{command}", run_name="__main__", alter_sys=False)
        assert exit_.value.code in (0, None), command
        assert "usage:" in capsys.readouterr().out, command
