"""``--format html``: one self-contained page; the plot has one mark per layer; Chromium
renders it to a picture that is not blank."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fixtures import signal_models

FIXTURE = Path(signal_models.__file__)
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class _Page(HTMLParser):
    """Every start tag with its attributes, and whether each closed where it should."""

    VOID = {"meta", "link", "br", "img", "input", "hr", "line", "circle", "polyline", "rect",
            "path"}

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1] if self.stack else 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    def with_class(self, *classes: str) -> list[dict[str, str]]:
        return [a for _, a in self.tags if set(classes) <= set(a.get("class", "").split())]


def _report(tmp_path: Path, cli, *attrs: str) -> tuple[str, list[dict]]:
    """The page ``--format html`` writes, and the same results as JSON (from the page's run:
    both reporters format one list of results, so each model is linted once)."""
    from biaslint.report import get_reporter

    out = tmp_path / "report.html"
    targets = [f"{FIXTURE}:{a}" for a in attrs]
    seen: list = []
    import biaslint.report.html as html_module

    render = html_module.render

    def spy(results):
        seen.extend(results)
        return render(results)

    html_module.render = spy
    try:
        result = cli(*targets, "--format", "html", "--output", str(out), "--allow-incomplete")
    finally:
        html_module.render = render
    assert result.exit_code in (0, 1), result.stderr
    data = json.loads(get_reporter("json")(seen))
    return out.read_text(encoding="utf-8"), data["results"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from click.testing import CliRunner

    from biaslint.cli import main

    def cli(*args):
        return CliRunner().invoke(main, list(args), catch_exceptions=False)

    tmp = tmp_path_factory.mktemp("html")
    return _report(tmp, cli, "planted", "resnet", "vit")


def test_page_parses_and_is_self_contained(page) -> None:
    html, _ = page
    parsed = _Page()
    parsed.feed(html)
    parsed.close()
    assert not parsed.errors and parsed.stack == [], (parsed.errors, parsed.stack)
    assert html.startswith("<!DOCTYPE html>")
    assert "http://" not in html and "https://" not in html
    for tag, attrs in parsed.tags:  # nothing fetched: no script, stylesheet or image sources
        assert not (tag in ("script", "img", "iframe", "link") and
                    (attrs.get("src") or attrs.get("href"))), (tag, attrs)
    assert len([t for t, _ in parsed.tags if t == "svg"]) == 3  # a plot per target


def test_one_mark_per_layer_and_findings_on_the_curve(page) -> None:
    html, results = page
    parsed = _Page()
    parsed.feed(html)
    marks = parsed.with_class("mark", "act")
    layers = [p["layer"] for r in results for p in r["signal"]["points"]]
    assert [m["data-layer"] for m in marks] == layers
    # one per layer with parameters, for each model (all of them run on these inputs)
    import torch
    expected = []
    for attr in ("planted", "resnet", "vit"):
        torch.manual_seed(0)
        model, _ = getattr(signal_models, attr)()
        expected += [n for n, m in model.named_modules()
                     if any(True for _ in m.parameters(recurse=False))]
    assert sorted(layers) == sorted(expected)
    assert len(parsed.with_class("mark", "grad")) == len(layers)
    # the planted model's BL003 finding is a ring on its layer's point
    planted = results[0]
    bl003 = {f["module"] for f in planted["findings"] if f["code"] == "BL003"}
    assert bl003
    rings = {m["data-layer"] for m in parsed.with_class("finding-mark")}
    assert bl003 <= rings
    # residual boundaries from the ResNet and the ViT
    assert len(parsed.with_class("residual")) >= 8 + 8


def test_findings_with_source_and_fix(page) -> None:
    html, results = page
    for finding in results[0]["findings"]:
        assert f'data-code="{finding["code"]}"' in html
        assert f'{finding["file"]}:{finding["line"]}' in html
        if finding["fix"]:
            assert finding["fix"]["title"].split()[0] in html
    # the source line that built the layer is quoted
    assert "nn.init.normal_(linear.weight, 0.0, 1.0)" in html


def test_unjudged_layers_are_listed(tmp_path, cli, write_target) -> None:
    target = write_target("""
        import torch, torch.nn as nn
        def build():
            m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
            with torch.no_grad():
                m[0].weight[0, 0] = float("nan")
            return m, torch.randn(3, 4)
    """)
    out = tmp_path / "r.html"
    result = cli(target, "--format", "html", "--output", str(out))
    assert result.exit_code == 2
    html = out.read_text()
    assert "Not judged" in html and "NaN" in html and "incomplete" in html


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def test_chromium_renders_the_report(page, tmp_path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt-get install -y chromium); the "
                    "page's structure is checked by the other tests of this file")
    from PIL import Image

    html, _ = page
    path = tmp_path / "report.html"
    path.write_text(html, encoding="utf-8")
    shot = tmp_path / "shot.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,1400",
               f"--screenshot={shot}", path.as_uri()]
    subprocess.run(command, check=True, timeout=120, capture_output=True,
                   env={**os.environ, "HOME": str(tmp_path)})
    image = Image.open(shot).convert("RGB")
    assert image.size == (1100, 1400)
    import numpy as np

    pixels = np.asarray(image, dtype=np.int32).reshape(-1, 3)
    ink = int((pixels.sum(axis=1) < 600).sum())
    assert ink > 0.01 * len(pixels), ink  # text and lines, not a blank page
    # the activation curve's blue (#0969da) is drawn: the SVG rendered, not only the text
    r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
    blue = int(((abs(r - 9) < 40) & (abs(g - 105) < 40) & (b > 180)).sum())
    assert blue > 200, blue


def _svgs(html: str) -> list[str]:
    import re

    return re.findall(r"<svg class=\"signal\".*?</svg>", html, flags=re.S)


def test_the_x_axis_names_the_layers(page) -> None:
    """A screenshot (a CI preview, the README's picture) has no hover: the x axis itself tells
    the layers apart, by name (shortened to the part that differs from the other layers)."""
    import re

    html, results = page
    for svg, result in zip(_svgs(html), results):
        layers = [p["layer"] or "<root>" for p in result["signal"]["points"]]
        from html import unescape

        ticks = [(unescape(layer), unescape(label)) for layer, label in re.findall(
            r'<text class="xtick" data-layer="([^"]*)"[^>]*>([^<]*)</text>', svg)]
        assert len(ticks) == len(layers), (result["target"], ticks)  # few layers: each named
        assert [layer for layer, _ in ticks] == layers
        labels = [label for _, label in ticks]
        assert len(set(labels)) == len(labels), labels  # no two layers look alike
        for layer, label in ticks:
            assert len(label) <= 24, label
            if "…" not in label:  # the name, or its end
                assert (layer == label or layer.endswith("." + label)), (layer, label)
    vit = [label for _, label in re.findall(r'<text class="xtick" data-layer="([^"]*)"[^>]*>'
                                            r'([^<]*)</text>', _svgs(html)[2])]
    assert "conv_proj" in vit and "head" in vit, vit  # the stem and the head at a glance
    resnet = re.findall(r'class="xtick"[^>]*>([^<]*)<', _svgs(html)[1])
    assert "conv1" in resnet and "fc" in resnet and "layer1.0.conv1" in resnet, resnet


def test_zero_and_non_finite_points_are_hollow_in_their_curves_colour(page) -> None:
    """README: the gradient curve is orange and a zero gradient is drawn hollow at the edge;
    red rings are the BL003/BL007 findings alone, so an off-scale point must not be red."""
    import re

    from biaslint.report.html import _PAGE_CSS

    html, _ = page
    rules = dict(re.findall(r"([^{}]+)\{([^{}]*)\}", _PAGE_CSS))
    offscale = {selector.strip(): body for selector, body in rules.items()
                if "offscale" in selector}
    assert offscale, _PAGE_CSS
    for selector, body in offscale.items():
        assert "var(--bad)" not in body, (selector, body)
    grad = [body for selector, body in offscale.items() if ".grad" in selector]
    act = [body for selector, body in offscale.items() if ".act" in selector]
    assert grad and "stroke: var(--grad)" in grad[0], offscale
    assert act and "stroke: var(--act)" in act[0], offscale
    legend = re.search(r'<div class="legend.*?</div>', html, flags=re.S).group(0)
    hollow = legend.split("zero, or not finite")[0].rsplit("<span>", 1)[1]
    assert "var(--bad)" not in hollow, hollow
    # the README says so
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "Orange is the gradient RMS" in readme and "hollow" in readme
