"""Manifest content (sample ids, labels, text, failure reasons) made inert for the places that render it.

HTML goes through `html.escape` (or an autoescaping template); markdown through `markdown_literal`.
"""

from __future__ import annotations

import re

_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def markdown_literal(text: str) -> str:
    """`text` as markdown that renders as exactly these characters, on one line.

    Every ASCII punctuation mark is backslashed, which CommonMark and GFM (Prefect's UI, GX's notes) read as
    that literal character: no image, link, autolink, raw HTML, emphasis or table pipe survives. Line breaks
    become spaces so a value cannot start a block (heading, list, fence) or leave a table row.
    """
    return _PUNCTUATION.sub(r"\\\1", re.sub(r"[\r\n]+", " ", text))
