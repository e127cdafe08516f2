"""What a person sees: the report and the Data Docs in headless Chromium, rendered, with no request off the page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from multimodal.reporting.report import build_report
from tests.browser import CHROMIUM, render
from tests.report_run import build_run
from tests.unit.reporting.test_report import inputs

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium for a headless browser")]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    files = build_run(tmp_path_factory.mktemp("run"))
    files["report"] = files["validated"].parent / "report.html"
    files["report"].write_text(build_report(inputs(files)), encoding="utf-8")
    return files


def assert_drawn(png: Path) -> None:
    """A real page, not a blank or an error screen: many distinct shades, dark text on a light page, and colour."""
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    gray = pixels.mean(axis=2)
    assert gray.std() > 20, f"{png}: nearly uniform"
    assert (gray < 100).mean() > 0.005 and (gray > 230).mean() > 0.3, f"{png}: no text on a light page"
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 60).mean() > 0.001, f"{png}: no colour (figures, headers)"


def test_report_renders_with_no_request(run, tmp_path):
    png = tmp_path / "report.png"
    rendered = render(run["report"], png, size=(1280, 2400))
    assert rendered.requests == []
    assert_drawn(png)


def test_data_docs_render_styled_with_no_request(run, tmp_path):
    docs = run["docs"]
    dom = render(docs / "index.html", dump_dom=True)
    assert dom.requests == []
    # bootstrap-table wrapped the runs table: jQuery and bootstrap-table ran, from the site's own copies.
    assert 'class="bootstrap-table' in dom.dom
    page = next((docs / "validations").rglob("*.html"))
    png = tmp_path / "validation.png"
    assert render(page, png, size=(1280, 1600)).requests == []
    assert_drawn(png)


def test_the_request_check_sees_a_page_request(tmp_path):
    """The control: a page that does reach out is caught (so an empty list above means something)."""
    page = tmp_path / "leaky.html"
    page.write_text('<p>hello</p><img src="http://evil.example/p.png"><link rel="stylesheet" href="x.css">')
    assert render(page, tmp_path / "leaky.png", size=(400, 300)).requests == ["http://evil.example/p.png"]
