"""The report's figures, drawn with matplotlib into PNG `data:` URIs (the page loads nothing from anywhere)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml", ".webp": "image/webp"}
DPI = 96


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display, and no GUI toolkit import
    import matplotlib.pyplot as plt

    return plt


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_uri(path: Path) -> str:
    """An image file as a data URI. SVG too: inside <img> a browser runs none of its scripts and loads nothing."""
    return data_uri(path.read_bytes(), IMAGE_TYPES[path.suffix.lower()])


def _png(fig) -> str:
    plt = _pyplot()
    buffer = io.BytesIO()
    # No "Software" stamp: the same figures give the same bytes, so the report is reproducible.
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return data_uri(buffer.getvalue(), "image/png")


def interval_chart(names: Sequence[str], values: Sequence[float], lows: Sequence[float | None],
                   highs: Sequence[float | None], xlabel: str, reference: float | None = None,
                   reference_label: str = "", highlight: str | None = None) -> str:
    """One row per name: the value as a dot and its 95% interval as a bar (a forest plot); top row first."""
    plt = _pyplot()
    height = 0.9 + 0.32 * len(names)
    fig, ax = plt.subplots(figsize=(7.2, height))
    y = np.arange(len(names))[::-1]
    for yi, name, value, low, high in zip(y, names, values, lows, highs):
        color = "#a4330f" if name == highlight else "#2459a8"
        if low is not None and high is not None:
            ax.plot([low, high], [yi, yi], color=color, linewidth=2.2, solid_capstyle="butt")
        ax.plot([value], [yi], "o", color=color, markersize=6)
    if reference is not None:
        ax.axvline(reference, color="#5b6474", linestyle="--", linewidth=1)
        if reference_label:
            ax.annotate(reference_label, (reference, y.max() + 0.45), fontsize=8, color="#5b6474", ha="center",
                        annotation_clip=False)
    ax.set_yticks(y, list(names), fontsize=9)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", color="#e4e7ec", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _png(fig)


def front_chart(names: Sequence[str], latency_ms: Sequence[float], accuracy: Sequence[float],
                lows: Sequence[float | None], highs: Sequence[float | None], xlabel: str) -> str:
    """Accuracy (with its 95% interval) against latency, one labelled point per model: the compression front."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 4.2))
    for name, x, y, low, high in zip(names, latency_ms, accuracy, lows, highs):
        color = "#a4330f" if name == "original" else "#2459a8"
        if low is not None and high is not None:
            ax.plot([x, x], [low, high], color=color, linewidth=1.6, alpha=0.6)
        ax.plot([x], [y], "o", color=color, markersize=6)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8, color=color)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("test accuracy", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(color="#e4e7ec", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return _png(fig)


def confusion_chart(labels: Sequence[str], counts: np.ndarray, xlabel: str, ylabel: str) -> str:
    """Counts per (actual, predicted), coloured by the share of each actual class's row."""
    plt = _pyplot()
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(7.0, 1.6 + 0.42 * len(labels))
    fig, ax = plt.subplots(figsize=(side + 0.8, side))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if len(labels) <= 20:  # beyond that the numbers no longer fit their cells
        for (i, j), count in np.ndenumerate(counts):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.6 else "#1d2330")
    ax.set_xticks(range(len(labels)), list(labels), fontsize=8, rotation=90 if len(labels) > 12 else 0)
    ax.set_yticks(range(len(labels)), list(labels), fontsize=8)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the actual class")
    return _png(fig)
