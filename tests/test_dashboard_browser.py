"""The dashboard page in a real browser: headless Chromium (Debian's `chromium`, installed by
`.ci/run`) renders the page of a tiny run from file://, with no console message, the full table
after its script ran, a card opened by a deep link with its images, and a screenshot that is
not blank."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cache.atomic import write_json_atomic
from mammosae_jax.demo.gates import GATES_FILE
from mammosae_jax.demo.gates import evaluate_gates
from mammosae_jax.demo.plan import DASHBOARD, DemoConfig, dashboard_stage
from mammosae_jax.demo.stages import run_stage
from tests.helpers.dashboard_data import shared_run
from tests.helpers.figure_data import assert_png_drawn

PAGE_ROWS = 100  # rows per table page (dashboard.js PAGE)


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed: the browser test needs Debian's `chromium` package "
                    "(`apt-get install -y chromium`; .ci/run installs it)")
    return path


def run_chromium(tmp: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on `url` with console messages logged to stderr (`INFO:CONSOLE` lines)."""
    cmd = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
           *args, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


class Elements(HTMLParser):
    """Every element of a DOM dump: (tag, attributes), in document order, with the text of #page-errors."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.in_errors = False
        self.errors = ""

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.elements.append((tag, a))
        self.in_errors = a.get("id") == "page-errors"

    def handle_data(self, data):
        if self.in_errors:
            self.errors += data

    def find(self, tag: str | None = None, **attrs: str) -> list[dict[str, str]]:
        return [a for t, a in self.elements if (tag is None or t == tag)
                and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The page as the demo writes it: its dashboard stage on a run in the demo's layout."""
    run = shared_run(tmp_path_factory)
    gates = evaluate_gates(run.out, DemoConfig())  # as the demo does before its dashboard stage
    write_json_atomic(run.out / GATES_FILE, [dataclasses.asdict(g) for g in gates])
    result = run_stage(dashboard_stage(run.out), tmp_path_factory.mktemp("logs"), force=True)
    (run.out / GATES_FILE).unlink()  # the data test reads the run without gates
    out = run.out / DASHBOARD
    assert not result.skipped and out.is_file()
    text = out.read_text()
    data = json.loads(re.search(r'<script type="application/json" id="dashboard-data">(.*?)</script>', text, re.S)[1])
    assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from the network
    return out, data


def dump(tmp: Path, url: str) -> tuple[Elements, str]:
    result = run_chromium(tmp, url, "--dump-dom")
    dom = Elements()
    dom.feed(result.stdout)
    return dom, result.stderr


def test_page_renders_the_table_and_a_deep_linked_card_without_console_messages(page, tmp_path):
    path, data = page
    firing = data["table"]["id"]
    latent = next(j for r, j in enumerate(firing) if sum(i >= 0 for i in data["cards"]["img"][r]) >= 2
                  and str(j) in data["names"])
    dom, stderr = dump(tmp_path, path.as_uri() + f"#latent={latent}")
    assert [line for line in stderr.splitlines() if ":CONSOLE" in line] == []
    assert dom.errors.strip() == "" and dom.find("pre", id="page-errors")[0].get("hidden") is not None
    assert dom.find("body")[0].get("data-ready") == "1"

    table = dom.find("table", id="latent-table")[0]
    assert int(table["data-total"]) == len(firing) == int(table["data-filtered"])
    rows = [int(a["data-latent"]) for a in dom.find("tr") if "data-latent" in a]
    assert len(rows) == min(PAGE_ROWS, len(firing)) and set(rows) == set(firing)
    score = data["table"][f"score:{data['labels'][0]}"]  # the table opens sorted by it, best first
    assert rows == [firing[r] for r in sorted(range(len(firing)), key=lambda r: (-score[r], firing[r]))]

    card = dom.find("aside", id="card")[0]
    assert card.get("hidden") is None
    r = firing.index(latent)
    top = [i for i in data["cards"]["img"][r] if i >= 0]
    shots = dom.find("div", **{"class": "shot"})
    assert [int(s["data-image"]) for s in shots] == top
    images = [a for a in dom.find("img") if a.get("src", "").startswith("data:image/jpeg;base64,")]
    assert len(images) == len(top)
    assert len(dom.find("canvas", **{"class": "heat"})) == len(top)
    patches = dom.find("div", **{"class": "patch"})
    assert len(patches) == len(top) and all("data:image/jpeg;base64," in p["style"] for p in patches)
    boxed = [i for i in top if data["images"][str(i)]["boxes"]]
    assert boxed and len(dom.find("rect")) >= sum(len(b) for i in boxed for b in data["images"][str(i)]["boxes"].values())
    verdicts = [g["passed"] for g in data["overview"]["gates"]]
    assert len(dom.find("div", id="gates")) == 1 and len(verdicts) == 11
    assert len(dom.find("span", **{"class": "pass"})) == sum(verdicts) and len(dom.find("span", **{"class": "fail"})) == 11 - sum(verdicts)
    assert len(dom.find("div", id="reconstruction")) == 1
    assert len(dom.find("div", id="prompts")) == 1  # the name_latents prompts of this latent
    assert len(dom.find("svg", **{"class": "curve"})) == len(data["labels"]) == 2
    assert len(dom.find("path", data_series="activated")) == 2


def test_screenshot_of_a_card_is_not_blank(page, tmp_path):
    path, data = page
    shot = tmp_path / "shot.png"
    run_chromium(tmp_path, path.as_uri() + f"#latent={data['table']['id'][0]}", f"--screenshot={shot}",
                 "--window-size=1200,900")
    rgb = assert_png_drawn(shot, size=(1200, 900), min_colours=64)
    assert rgb.astype(np.float64).std() > 20
    with Image.open(shot) as im:
        right = np.asarray(im.convert("L"))[:, 700:]  # the card's side of the page shows the images
    assert right.std() > 20
