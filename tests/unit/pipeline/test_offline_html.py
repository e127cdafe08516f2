"""The no-external-URL check that guards the report and the Data Docs: every way a page can reach out is caught."""

from __future__ import annotations

import pytest

from multimodal.pipeline.offline_html import external_references, is_external


@pytest.mark.parametrize(
    "page",
    [
        '<img src="http://evil/p.png">',
        '<script src="https://cdn.example/x.js"></script>',
        '<link rel="stylesheet" href="//cdn.example/x.css">',
        '<a href="ftp://host/file">x</a>',
        '<img src=" https://evil/p.png">',  # leading space: browsers strip it
        '<img src="ht\ttps://evil/p.png">',  # a tab inside the scheme: browsers drop it
        '<img src="\\\\evil\\p.png">',  # backslashes read as slashes: a network path
        '<img src="/\\evil/p.png">',
        '<img src="&#104;ttps://evil/p.png">',  # an entity: decoded before the URL is read
        '<img srcset="a.png 1x, https://evil/p.png 2x">',
        '<div style="background: url(https://evil/p.png)"></div>',
        '<style>body { background: url("https://evil/p.png") }</style>',
        '<style>@import "https://evil/x.css";</style>',
        '<style>div { background: url(\\68 ttps://evil/p.png) }</style>',  # a CSS escape of `h`
        '<meta http-equiv="refresh" content="0; url=https://evil/">',
        '<form action="https://evil/submit"></form>',
        '<video poster="https://evil/p.png"></video>',
        '<object data="https://evil/x.swf"></object>',
        '<svg><image xlink:href="https://evil/p.png"/></svg>',
        '<iframe src="file:///etc/passwd"></iframe>',  # not the network, but not inside the page either
        '<a href="javascript:alert(1)">x</a>',
    ],
)
def test_every_kind_of_external_reference_is_found(page):
    assert external_references(page), page


@pytest.mark.parametrize(
    "page",
    [
        '<img src="data:image/png;base64,iVBORw0KGgo=">',
        '<a href="#models">models</a>',
        '<link rel="stylesheet" href="static/styles/x.css">',
        '<img src="../../static/images/logo.png">',
        '<style>a { background: url(data:image/svg+xml;base64,PHN2Zz4=) }</style>',
        "<p>a sample id &lt;img src=&quot;http://evil/p.png&quot;&gt; shown as text</p>",
        "<p>![x](http://evil/p.png) in text is not a reference</p>",
    ],
)
def test_self_contained_references_pass(page):
    assert external_references(page) == []


def test_stylesheets_are_checked_comments_ignored():
    css = "/* see https://getbootstrap.com */ .a { background: url('../img/x.png') } .b { src: url(//evil/f.woff2) }"
    assert external_references(css, kind="css") == ["//evil/f.woff2"]


def test_data_is_the_only_scheme_allowed():
    assert not is_external("data:text/plain,hi")
    assert is_external("DATA2:x") and is_external("mailto:a@b") and is_external("HTTPS://x")
