"""Manifest content built to attack whatever renders it, and the checks that a rendered page defused it."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from multimodal.pipeline.offline_html import external_references

# A script, a markdown image and raw HTML with an event handler, all pointing at a host that must never be asked.
HOSTILE = ('<script>alert(1)</script>![x](http://evil.example/p.png)'
           '<img src="http://evil.example/i.png" onerror="alert(2)">')


class _Live(HTMLParser):
    """Collects what a browser would run: script bodies and `on*` event-handler attributes; and the visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self.handlers: list[str] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.handlers += [f"{tag} {name}={value}" for name, value in attrs if name.lower().startswith("on")]
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        (self.scripts if self._in_script else self.text).append(data)


def parse(page: str) -> _Live:
    parser = _Live()
    parser.feed(page)
    parser.close()
    return parser


def assert_defused(page: str, where: str | Path) -> str:
    """The page runs no injected script or handler and reaches no external URL; returns its visible text."""
    parsed = parse(page)
    assert not [s for s in parsed.scripts if "alert(" in s], f"{where}: an injected script is live"
    assert not [h for h in parsed.handlers if "alert(" in h], f"{where}: an injected event handler is live"
    assert external_references(page) == [], f"{where}: external references {external_references(page)}"
    return "".join(parsed.text)


class Tags(HTMLParser):
    """Every start tag of a page with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
