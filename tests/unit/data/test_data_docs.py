"""Data Docs from a real validation of a hostile manifest: escaped, self-contained, and still complete."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import mistune
import pytest

from multimodal.data.data_docs import ASSETS, VENDOR, offline_page
from multimodal.data.validation import validate_dataset
from multimodal.pipeline.escape import markdown_literal
from multimodal.pipeline.offline_html import css_urls, external_references, html_urls, is_external
from tests.unit.data.test_validation import OPTIONS, clean_rows, row, write_dataset
from tests.unit.hostile import HOSTILE, Tags, assert_defused


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> tuple[Path, list[logging.LogRecord]]:
    """Data Docs of clean rows plus hostile ones: in the train labels (so in every expectation's value set and
    notes), as an unexpected label, split and sample id, and in a text cell."""
    root = tmp_path_factory.mktemp("hostile") / "raw"
    rows = clean_rows(root) + [
        row(HOSTILE, label=HOSTILE, split="train", text=HOSTILE),
        row("split" + HOSTILE, split=HOSTILE, text="ok"),
        row("long" + HOSTILE, text="y" * 60 + HOSTILE),
    ]
    frame = write_dataset(root, rows)
    handler = _Records()
    logging.getLogger("multimodal.data.data_docs").addHandler(handler)
    try:
        validate_dataset(frame, root, OPTIONS, docs_dir=root.parent / "docs")
    finally:
        logging.getLogger("multimodal.data.data_docs").removeHandler(handler)
    return root.parent / "docs", handler.records


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_hostile_values_are_shown_as_text_never_run(docs):
    site, _ = docs
    pages = sorted(site.rglob("*.html"))
    assert len(pages) >= 5
    shown = {page: assert_defused(page.read_text(encoding="utf-8"), page) for page in pages}
    # The failing label is listed among the unexpected values, as the literal characters.
    validation = next(p for p in pages if "validations/sample_checks" in p.as_posix())
    assert HOSTILE in shown[validation]
    # The notes (markdown in GX) name the allowed labels: the markdown image stays text, no <img> from evil.
    suite = site / "expectations" / "sample_checks.html"
    assert "![x](http://evil.example/p.png)" in shown[suite]


def test_every_page_and_stylesheet_is_self_contained(docs):
    site, warnings = docs
    files = [p for p in site.rglob("*") if p.suffix in (".html", ".css")]
    for file in files:
        text = file.read_text(encoding="utf-8")
        assert external_references(text, "css" if file.suffix == ".css" else "html") == [], file
    assert not [r for r in warnings if "dropped references" in r.getMessage()]  # every CDN asset had a copy


def test_every_local_reference_resolves(docs):
    """The vendored copies are where the rewritten tags say: the pages keep their styles, scripts and fonts."""
    site, _ = docs
    missing = []
    for file in [p for p in site.rglob("*") if p.suffix in (".html", ".css")]:
        text = file.read_text(encoding="utf-8")
        urls = css_urls(text) if file.suffix == ".css" else html_urls(text)
        for url in urls:
            path = url.split("#")[0].split("?")[0]
            if path and not is_external(url) and not url.startswith("data:"):
                if not (file.parent / path).exists():
                    missing.append(f"{file.relative_to(site)} -> {url}")
    assert missing == []
    assert (site / "static" / "vendor" / "fontawesome" / "webfonts" / "fa-solid-900.woff2").is_file()


def test_cdn_tags_become_plain_local_tags():
    page = (
        '<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>\n'
        '<script src="https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js" '
        'integrity="sha384-x" crossorigin="anonymous"></script>\n'
        '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>\n'
        '<p>See <a href="https://greatexpectations.io" class="x">Great Expectations</a>.</p>\n'
        '<script src="https://cdn.example/unknown.js"></script>'
    )
    unknown: list[str] = []
    site = Path("/site")
    out = offline_page(page, site / "validations" / "a" / "page.html", site, unknown)
    parser = Tags()
    parser.feed(out)
    tags = parser.tags
    assert ("link", {"rel": "stylesheet", "href": "../../static/vendor/bootstrap/bootstrap.min.css"}) in tags
    # No integrity/crossorigin: a file:// page cannot satisfy CORS, and the browser would refuse the script.
    assert ("script", {"src": "../../static/vendor/popper.js/popper.min.js"}) in tags
    assert ("a", {"class": "x"}) in tags and "Great Expectations</a>" in out  # the link text stays
    assert "vega" not in out and unknown == ["https://cdn.example/unknown.js"]
    assert external_references(out) == []


def test_every_vendored_file_exists():
    for asset in ASSETS:
        for file in asset.files:
            assert (VENDOR / file).is_file(), file
        assert asset.files or asset.why_dropped


def test_markdown_literal_renders_exactly_the_text():
    rendered = mistune.markdown(markdown_literal(HOSTILE))
    assert "<img" not in rendered and "<script" not in rendered
    assert re.sub(r"</?p>\n?", "", rendered).replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"') \
        .replace("&amp;", "&") == HOSTILE
