"""Find every reference in an HTML page or a stylesheet that would make a browser reach outside the file.

A self-contained page may point only at itself (`#fragment`), at inline data (`data:`) or at files beside it
(relative paths). Anything with a scheme (`https:`, `ftp:`, `file:`, `javascript:` ...) or a network-path
(`//host/...`) is reported. Browsers forgive a lot (`\\\\host`, tabs inside `ht\\ttps:`, leading spaces): the check
normalises URLs the way the URL standard does before it looks at them, so those tricks are caught too.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# Attributes whose value the browser resolves as a URL (fetched, navigated to, or submitted to).
URL_ATTRIBUTES = frozenset({
    "src", "href", "action", "formaction", "poster", "data", "background", "cite", "longdesc", "manifest", "ping",
    "codebase", "archive", "profile", "usemap", "icon", "lowsrc", "dynsrc", "xlink:href", "xml:base",
})
SRCSET_ATTRIBUTES = frozenset({"srcset", "imagesrcset"})
_CSS_URL = re.compile(r"""url\(\s*(['"]?)(.*?)\1\s*\)""", re.IGNORECASE | re.DOTALL)
_CSS_IMPORT = re.compile(r"""@import\s+(['"])(.*?)\1""", re.IGNORECASE)
_CSS_ESCAPE = re.compile(r"\\([0-9a-fA-F]{1,6})\s?|\\(.)", re.DOTALL)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_REFRESH_URL = re.compile(r"url\s*=\s*['\"]?([^'\";]+)", re.IGNORECASE)


def is_external(url: str) -> bool:
    """Whether `url` leaves the page: any scheme but `data:`, or a network path (`//host`, `\\\\host`)."""
    # URL-standard parsing: strip leading/trailing C0 controls and spaces, drop tabs and newlines anywhere,
    # and read backslashes as slashes (browsers do, for http-like URLs).
    url = re.sub(r"[\t\n\r]", "", url).strip("\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b\x0c\x0e\x0f"
                                             "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f ")
    url = url.replace("\\", "/")
    scheme = _SCHEME.match(url)
    if scheme:
        return scheme.group(1).lower() != "data"
    return url.startswith("//")


def _css_unescape(text: str) -> str:
    """CSS escapes (`\\68 ttp`, `\\:`) as the characters a browser reads."""
    def one(match: re.Match) -> str:
        if match.group(1):
            code = int(match.group(1), 16)
            return chr(code) if 0 < code <= 0x10FFFF else "\ufffd"
        return match.group(2)

    return _CSS_ESCAPE.sub(one, text)


def css_urls(css: str) -> list[str]:
    """Every `url(...)` and `@import "..."` target in a stylesheet (or a `style` attribute)."""
    css = _css_unescape(re.sub(r"/\*.*?\*/", "", css, flags=re.DOTALL))
    return [m.group(2) for m in _CSS_URL.finditer(css)] + [m.group(2) for m in _CSS_IMPORT.finditer(css)]


class _References(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities decoded, as the browser decodes them
        self.urls: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name.lower(): value or "" for name, value in attrs}
        for name, value in values.items():
            if name in URL_ATTRIBUTES:
                self.urls.append(value)
            elif name in SRCSET_ATTRIBUTES:
                self.urls += [part.strip().split(" ")[0] for part in value.split(",") if part.strip()]
            elif name == "style":
                self.urls += css_urls(value)
        if tag == "meta" and values.get("http-equiv", "").lower() == "refresh":
            self.urls += _REFRESH_URL.findall(values.get("content", ""))
        self._in_style = tag == "style"

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.urls += css_urls(data)


def html_urls(page: str) -> list[str]:
    """Every URL a browser could resolve from `page`: URL attributes, srcset, inline CSS, meta refresh."""
    parser = _References()
    parser.feed(page)
    parser.close()
    return parser.urls


def external_references(text: str, kind: str = "html") -> list[str]:
    """The external URLs of an HTML page (`kind="html"`) or a stylesheet (`kind="css"`), in document order."""
    urls = css_urls(text) if kind == "css" else html_urls(text)
    return [url for url in urls if is_external(url)]
