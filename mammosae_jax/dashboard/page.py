"""Write the page: the template (`template.html`, `dashboard.css`, `dashboard.js`, package data
next to this module) with the collected data embedded as JSON; one file, no external resource."""
from __future__ import annotations

from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

from cache.atomic import write_text_atomic
from mammosae_jax.dashboard.encode import script_json

DATA_ID = "dashboard-data"


def asset(name: str) -> str:
    """The text of one of the package's template files."""
    return resources.files("mammosae_jax.dashboard").joinpath(name).read_text(encoding="utf-8")


def render(data: dict[str, Any], title: str) -> str:
    """The page's HTML with `data` embedded."""
    html = asset("template.html").replace("{{TITLE}}", escape(title))  # before anything is inserted
    for key, value in (("{{CSS}}", asset("dashboard.css")), ("{{JS}}", asset("dashboard.js")),
                       ("{{DATA}}", script_json(data))):
        html = html.replace(key, value, 1)
    return html


def write_page(data: dict[str, Any], path: str | Path, title: str = "SAE latents") -> Path:
    """Write the page atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render(data, title))
    return path
