"""Great Expectations Data Docs that are safe to open: manifest content escaped, no request leaves the machine.

GX 1.24 renders two kinds of user content raw: the unexpected values of a failed expectation (a sample id
`<script>...</script>` runs as a script) and expectation notes, which go through a markdown renderer (a label
`![x](http://host/p.png)` in a note becomes an image fetched from that host). Its pages also load Bootstrap, jQuery,
Font Awesome and friends from public CDNs and a tracking logo from S3.

`publish` fixes both on the GX project a validation run leaves behind: it escapes the stored results and notes,
re-renders the site from them (GX's own renderer, through its public API), copies the site out, points every CDN
reference at the copies in `vendor/data_docs/` (see its README) and refuses to finish if any external reference
is left on any page or stylesheet.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multimodal.pipeline.escape import markdown_literal
from multimodal.pipeline.offline_html import external_references, is_external

log = logging.getLogger(__name__)

VENDOR = Path(__file__).resolve().parents[2] / "vendor" / "data_docs"
SITE_VENDOR = Path("static") / "vendor"  # where the copies go inside a Data Docs site
SITE_LOGO = Path("static") / "images" / "logo-long.png"  # GX ships the logo in the site too
SITE_ICON = Path("static") / "images" / "favicon.ico"


@dataclass(frozen=True)
class Asset:
    """A CDN URL of GX's templates and the vendored files that replace it (none: the tag is dropped)."""

    url: str  # a regular expression, matched against the whole URL
    files: tuple[str, ...]
    why_dropped: str = ""


_CDN = r"https://(?:cdnjs\.cloudflare\.com/ajax/libs|cdn\.jsdelivr\.net/npm|unpkg\.com|code\.jquery\.com|" \
       r"(?:maxcdn|stackpath)\.bootstrapcdn\.com)/"
_TABLE = _CDN + r"bootstrap-table@1\.19\.[01]/dist/"
ASSETS = (
    Asset(_CDN + r"jquery-3\.7\.1\.min\.js", ("jquery/jquery.min.js",)),
    Asset(_CDN + r"popper\.js/1\.12\.9/umd/popper\.min\.js", ("popper.js/popper.min.js",)),
    Asset(_CDN + r"bootstrap/4\.3\.1/css/bootstrap\.min\.css", ("bootstrap/bootstrap.min.css",)),
    Asset(_CDN + r"bootstrap/4\.3\.1/js/bootstrap\.min\.js", ("bootstrap/bootstrap.min.js",)),
    Asset(_TABLE + r"bootstrap-table\.min\.css", ("bootstrap-table/bootstrap-table.min.css",)),
    Asset(_TABLE + r"bootstrap-table\.min\.js", ("bootstrap-table/bootstrap-table.min.js",)),
    Asset(_TABLE + r"extensions/filter-control/bootstrap-table-filter-control(?:\.min)?\.css",
          ("bootstrap-table/bootstrap-table-filter-control.min.css",)),
    Asset(_TABLE + r"extensions/filter-control/bootstrap-table-filter-control\.min\.js",
          ("bootstrap-table/bootstrap-table-filter-control.min.js",)),
    Asset(_CDN + r"bootstrap-datepicker/1\.9\.0/css/bootstrap-datepicker\.min\.css",
          ("bootstrap-datepicker/bootstrap-datepicker.min.css",)),
    Asset(_CDN + r"bootstrap-datepicker/1\.9\.0/js/bootstrap-datepicker\.min\.js",
          ("bootstrap-datepicker/bootstrap-datepicker.min.js",)),
    Asset(_CDN + r"font-awesome/6\.6\.0/css/all\.min\.css",
          ("fontawesome/css/fontawesome.min.css", "fontawesome/css/solid.min.css")),
    Asset(_CDN + r"vega(?:-lite|-embed)?@\d+", (), "Vega draws profiling charts; these pages have none"),
    Asset(_CDN + r"@forevolve/bootstrap-dark@[\d.]+/dist/css/bootstrap-prefers-dark\.css", (),
          "a dark theme for dark-mode browsers; the pages stay light"),
)
# GX's logos (navbar image, dark-mode CSS background); the navbar one carries a timestamp and the context id, a
# tracking pixel whenever the page is opened. Each becomes the site's own copy of the logo.
_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.[a-z0-9-]+\.amazonaws\.com/[\w.-]+\.png(?:\?.*)?")

_SCRIPT = re.compile(r"<script\b(?P<attrs>[^>]*)>\s*</script>", re.IGNORECASE)
_TAG = re.compile(r"<(?P<tag>[a-zA-Z][\w:-]*)(?P<attrs>(?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_ATTR = re.compile(r"(?P<name>[^\s=/>\"']+)(?:\s*=\s*(?P<value>\"[^\"]*\"|'[^']*'|[^\s>]+))?")
_URL_ATTRS = ("src", "href", "action")
_CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", re.IGNORECASE | re.DOTALL)
_STYLE = re.compile(r"(<style\b[^>]*>)(.*?)(</style>)", re.IGNORECASE | re.DOTALL)


class ExternalReference(RuntimeError):
    """A Data Docs page or stylesheet still refers to something outside the site (names the file and URL)."""


# --------------------------------------------------------------------------------------------- escaping


def _html_strings(value: Any) -> Any:
    """Every string inside `value` (lists and dicts walked) HTML-escaped."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, list):
        return [_html_strings(v) for v in value]
    if isinstance(value, dict):
        return {k: _html_strings(v) for k, v in value.items()}
    return value


def _literal_notes(notes: Any) -> Any:
    if isinstance(notes, str):
        return markdown_literal(notes)
    if isinstance(notes, list):
        return [_literal_notes(n) for n in notes]
    if isinstance(notes, dict) and "content" in notes:  # {"format": "markdown", "content": ...}
        return {**notes, "content": _literal_notes(notes["content"])}
    return notes


def _escape_expectation(expectation: dict) -> None:
    if "notes" in expectation:
        expectation["notes"] = _literal_notes(expectation["notes"])


def _escape_result(result: dict) -> None:
    # Observed values (unexpected values, counts, exception text) are data, never markup; GX pastes them raw.
    for key in ("result", "exception_info"):
        if key in result:
            result[key] = _html_strings(result[key])
    _escape_expectation(result.get("expectation_config") or {})


def _rewrite_json(path: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


def escape_stores(gx_dir: Path) -> None:
    """Escape manifest content in the stored suites and validation results of the GX project in `gx_dir`."""
    for path in (gx_dir / "expectations").glob("*.json"):
        _rewrite_json(path, lambda suite: [_escape_expectation(e) for e in suite.get("expectations", [])])
    for path in (gx_dir / "uncommitted" / "validations").rglob("*.json"):
        _rewrite_json(path, lambda run: [_escape_result(r) for r in run.get("results", [])])


def _rebuild_site(project_dir: Path) -> Path:
    """Render the Data Docs again from the (escaped) stores, without GX's how-to buttons (links to its site)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    context = gx.get_context(mode="file", project_root_dir=str(project_dir))
    sites = context.variables.data_docs_sites
    for site in sites.values():
        site["show_how_to_buttons"] = False
    context.variables.data_docs_sites = sites
    site_dir = project_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    shutil.rmtree(site_dir, ignore_errors=True)
    context.build_data_docs()
    return site_dir


# --------------------------------------------------------------------------------------------- offline pages


def _asset(url: str) -> Asset | None:
    return next((a for a in ASSETS if re.fullmatch(a.url, url)), None)


def _attrs(text: str) -> dict[str, str]:
    return {m["name"].lower(): html.unescape((m["value"] or "").strip("\"'")) for m in _ATTR.finditer(text)}


def _local_tags(asset: Asset, page: Path, site: Path, script: bool) -> str:
    tags = []
    for file in asset.files:
        href = html.escape(_relative(site / SITE_VENDOR / file, page))
        tags.append(f'<script src="{href}"></script>' if script else f'<link rel="stylesheet" href="{href}">')
    return "\n".join(tags)


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target, start.parent).replace(os.sep, "/")


def offline_css(text: str, file: Path, site: Path, unknown: list[str]) -> str:
    """Stylesheet `text` (of `file`, or of a page's `<style>`) with external `url()`s local (GX logos) or `none`."""
    def url(match: re.Match) -> str:
        target = match[2]
        if not is_external(target):
            return match[0]
        if _LOGO.fullmatch(target):
            return f"url('{_relative(site / SITE_LOGO, file)}')"
        unknown.append(target)
        return "none"

    return _CSS_URL.sub(url, text)


def offline_page(text: str, page: Path, site: Path, unknown: list[str]) -> str:
    """`text` of `page` (inside `site`) with every external reference replaced by a local copy or removed.

    CDN scripts and stylesheets become tags for the vendored copies (without GX's `integrity`/`crossorigin`,
    which a `file://` page cannot satisfy); the logo becomes the site's copy; links to the web lose their
    `href` (their text stays). URLs that no `Asset` names are dropped and appended to `unknown`.
    """
    def script(match: re.Match) -> str:
        src = _attrs(match["attrs"]).get("src", "")
        if not is_external(src):
            return match[0]
        asset = _asset(src)
        if asset is None:
            unknown.append(src)
            return ""
        return _local_tags(asset, page, site, script=True)

    def tag(match: re.Match) -> str:
        name, attrs = match["tag"].lower(), _attrs(match["attrs"])
        if name == "link" and "icon" in attrs.get("rel", "").split():
            # GX's validation pages point one folder short of the icon: a broken request on every page view.
            return f'<link rel="{html.escape(attrs["rel"])}" href="{_relative(site / SITE_ICON, page)}">'
        external = {a: v for a, v in attrs.items() if a in _URL_ATTRS and is_external(v)}
        if not external:
            return match[0]
        if name == "link":
            asset = _asset(attrs.get("href", ""))
            if asset is None:
                unknown.append(attrs.get("href", ""))
            return _local_tags(asset, page, site, script=False) if asset else ""
        if name == "img" and _LOGO.fullmatch(attrs.get("src", "")):
            attrs["src"] = _relative(site / SITE_LOGO, page)
        else:
            for key in external:
                del attrs[key]
        rendered = "".join(f' {k}="{html.escape(v)}"' for k, v in attrs.items())
        return f"<{match['tag']}{rendered}>"

    def style(match: re.Match) -> str:
        return match[1] + offline_css(match[2], page, site, unknown) + match[3]

    return _STYLE.sub(style, _TAG.sub(tag, _SCRIPT.sub(script, text)))


def external_in_site(site: Path) -> dict[str, list[str]]:
    """{file: external URLs} over every page and stylesheet of `site`; empty when the site is self-contained."""
    found = {}
    for path in sorted(site.rglob("*")):
        kind = {".html": "html", ".css": "css"}.get(path.suffix)
        if kind:
            urls = external_references(path.read_text(encoding="utf-8", errors="replace"), kind)
            if urls:
                found[str(path.relative_to(site))] = urls
    return found


def publish(project_dir: Path, docs_dir: Path) -> None:
    """Copy the Data Docs site of the GX project in `project_dir` into `docs_dir`, escaped and self-contained."""
    gx_dir = project_dir / "gx"
    escape_stores(gx_dir)
    site = _rebuild_site(project_dir)
    shutil.copytree(site, docs_dir, dirs_exist_ok=True)
    shutil.copytree(VENDOR, docs_dir / SITE_VENDOR, dirs_exist_ok=True, ignore=shutil.ignore_patterns("README.md"))
    unknown: list[str] = []
    for page in docs_dir.rglob("*.html"):
        page.write_text(offline_page(page.read_text(encoding="utf-8"), page, docs_dir, unknown), encoding="utf-8")
    for sheet in (docs_dir / "static" / "styles").glob("*.css"):
        sheet.write_text(offline_css(sheet.read_text(encoding="utf-8"), sheet, docs_dir, unknown), encoding="utf-8")
    if unknown:
        log.warning("Data Docs: dropped references that vendor/data_docs has no copy of (the pages may render "
                    "less well; see scripts/vendor_data_docs.sh): %s", sorted(set(unknown)))
    left = external_in_site(docs_dir)
    if left:
        raise ExternalReference(f"Data Docs in {docs_dir} still refer outside the site: {left}")
