"""The report's document model (sections of blocks) and its one HTML template.

Blocks hold plain values; the template renders them with Jinja's autoescape on, so every string a manifest can
carry (sample ids, labels, reasons) reaches the page as text, never as markup. The page is self-contained: inline
CSS, images as `data:` URIs, no script, and a Content-Security-Policy that forbids any request even if something
slipped through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup


def fmt(value: Any) -> str:
    """A cell as text: floats to 4 significant digits, None as an empty cell, lists comma-separated."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(fmt(v) for v in value)
    return str(value)


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""
    more: int = 0  # rows left out
    kind: str = "table"

    @property
    def cells(self) -> list[list[str]]:
        return [[fmt(v) for v in row] for row in self.rows]

    @property
    def classes(self) -> list[str]:
        """Per column: `num` (right-aligned numbers), `short` (kept on one line), or nothing (wraps)."""
        cells = self.cells
        out = []
        for i, numeric in enumerate(self.numeric):
            longest = max((len(row[i]) for row in cells if i < len(row)), default=0)
            out.append("num" if numeric else "short" if longest <= 24 else "")
        return out

    @property
    def numeric(self) -> list[bool]:
        """Columns whose every filled cell is a number: right-aligned."""
        return [all(_numeric(r[i]) for r in self.rows if i < len(r) and r[i] is not None) and bool(self.rows)
                for i in range(len(self.columns))]


@dataclass
class Facts:
    items: list[tuple[str, Any]]
    kind: str = "facts"

    @property
    def cells(self) -> list[tuple[str, str]]:
        return [(k, fmt(v)) for k, v in self.items]


@dataclass
class Figure:
    data_uri: str  # data:image/png;base64,... (built here, never from input)
    alt: str
    caption: str = ""
    kind: str = "figure"


@dataclass
class Heading:
    text: str
    kind: str = "heading"


@dataclass
class Text:
    text: str
    tone: str = "plain"  # plain | good | warning | muted
    kind: str = "paragraph"


@dataclass
class Bullets:
    items: list[str]
    kind: str = "bullets"


@dataclass
class Code:
    text: str
    caption: str = ""
    kind: str = "code"


@dataclass
class Section:
    id: str
    title: str
    blocks: list[Any] = field(default_factory=list)
    folded: bool = False  # rendered inside <details>: long, for whoever wants the detail


CSS = """
:root { --ink: #1d2330; --muted: #5b6474; --line: #d9dde5; --bg: #f6f7f9; --accent: #2459a8;
        --good: #1e7a46; --warn: #a4330f; --warnbg: #fdf0ea; --goodbg: #ebf6ef; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; line-height: 1.45;
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: var(--ink); color: #fff; padding: 22px 40px 18px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 600; }
header p { margin: 0; color: #c9d1de; }
nav { background: var(--bg); border-bottom: 1px solid var(--line); padding: 8px 40px; position: sticky; top: 0; }
nav a { color: var(--accent); text-decoration: none; margin-right: 18px; font-size: 14px; white-space: nowrap; }
main { max-width: 1180px; padding: 8px 40px 60px; }
section { margin-top: 28px; }
h2 { font-size: 20px; border-bottom: 2px solid var(--line); padding-bottom: 4px; margin: 0 0 12px; }
summary { cursor: pointer; font-size: 20px; font-weight: 600; border-bottom: 2px solid var(--line);
          padding-bottom: 4px; margin-bottom: 12px; }
p { margin: 8px 0; }
h3 { font-size: 16px; margin: 18px 0 6px; color: var(--accent); }
.tone-good { background: var(--goodbg); border-left: 4px solid var(--good); padding: 8px 12px; }
.tone-warning { background: var(--warnbg); border-left: 4px solid var(--warn); padding: 8px 12px; font-weight: 600; }
.tone-muted { color: var(--muted); font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13.5px; max-width: 100%; display: block;
        overflow-x: auto; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 4px 0; color: var(--ink); }
th, td { border: 1px solid var(--line); padding: 4px 9px; vertical-align: top; text-align: left;
         overflow-wrap: break-word; max-width: 520px; }
td.short { white-space: nowrap; }
th { background: var(--bg); font-weight: 600; }
tr:nth-child(even) td { background: #fbfbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
dl { display: grid; grid-template-columns: max-content auto; gap: 3px 18px; margin: 8px 0 14px; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: break-word; min-width: 0; }
figure { margin: 10px 0 18px; display: inline-block; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; max-width: 640px; }
pre { background: var(--bg); border: 1px solid var(--line); padding: 10px 12px; overflow-x: auto; font-size: 12.5px; }
ul { margin: 6px 0 12px; padding-left: 22px; } li { margin: 3px 0; }
.more { color: var(--muted); font-size: 13px; margin-top: -8px; }
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<header><h1>{{ title }}</h1><p>{{ subtitle }}</p></header>
<nav>{% for s in sections %}<a href="#{{ s.id }}">{{ s.title }}</a>{% endfor %}</nav>
<main>
{% for s in sections %}
<section id="{{ s.id }}">
{% if s.folded %}<details><summary>{{ s.title }}</summary>{% else %}<h2>{{ s.title }}</h2>{% endif %}
{% for b in s.blocks %}{{ block(b) }}{% endfor %}
{% if s.folded %}</details>{% endif %}
</section>
{% endfor %}
</main>
</body>
</html>
"""

BLOCK = """
{% if b.kind == "table" %}
<table>{% if b.caption %}<caption>{{ b.caption }}</caption>{% endif %}
<thead><tr>{% for c in b.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% set classes = b.classes %}
{% for row in b.cells %}<tr>{% for cell in row %}
<td{% if classes[loop.index0] %} class="{{ classes[loop.index0] }}"{% endif %}>{{ cell }}</td>
{% endfor %}</tr>
{% endfor %}</tbody></table>
{% if b.more %}<p class="more">... and {{ b.more }} more row(s), in the file this table comes from</p>{% endif %}
{% elif b.kind == "facts" %}<dl>{% for k, v in b.cells %}<dt>{{ k }}</dt><dd>{{ v }}</dd>{% endfor %}</dl>
{% elif b.kind == "figure" %}
<figure><img src="{{ b.data_uri }}" alt="{{ b.alt }}">
{% if b.caption %}<figcaption>{{ b.caption }}</figcaption>{% endif %}</figure>
{% elif b.kind == "heading" %}<h3>{{ b.text }}</h3>
{% elif b.kind == "paragraph" %}<p class="tone-{{ b.tone }}">{{ b.text }}</p>
{% elif b.kind == "bullets" %}<ul>{% for item in b.items %}<li>{{ item }}</li>{% endfor %}</ul>
{% elif b.kind == "code" %}{% if b.caption %}<p class="tone-muted">{{ b.caption }}</p>{% endif %}<pre>{{ b.text }}</pre>
{% endif %}"""

_ENV = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
_BLOCK = _ENV.from_string(BLOCK)
_PAGE = _ENV.from_string(TEMPLATE)


def _block(block: Any) -> Markup:
    # The block template escapes every value itself; its output is markup to place as is.
    return Markup(_BLOCK.render(b=block))


def render_page(title: str, subtitle: str, sections: list[Section]) -> str:
    """The report as one HTML document."""
    return _PAGE.render(title=title, subtitle=subtitle, sections=sections, css=Markup(CSS), block=_block)
