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


def reliability_chart(curves: Sequence[tuple[str, Sequence[float], Sequence[float], Sequence[int]]]) -> str:
    """Reliability diagram: per curve (label, mean confidence per bin, accuracy per bin, rows per bin), accuracy
    against confidence, the marker area following the rows; the diagonal is perfect calibration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], color="#5b6474", linestyle="--", linewidth=1, label="perfect calibration")
    for (label, confidence, accuracy, counts), color in zip(curves, ("#2459a8", "#a4330f", "#3b7d3b")):
        sizes = 12 + 120 * np.asarray(counts, dtype=float) / max(max(counts, default=1), 1)
        ax.plot(confidence, accuracy, color=color, linewidth=1.4, label=label)
        ax.scatter(confidence, accuracy, s=sizes, color=color, alpha=0.7)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (highest class probability)", fontsize=9)
    ax.set_ylabel("accuracy in the bin", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.grid(color="#e4e7ec", linewidth=0.8)
    ax.set_axisbelow(True)
    return _png(fig)


def explanation_chart(maps: Sequence[tuple[str, np.ndarray, np.ndarray, str]],
                      contributions: dict[str, float | None]) -> str:
    """One row explained: per input with a map (title, input, attribution, layout) the input in grey and its
    attribution (red: towards the predicted class, blue: away), then a bar per modality's contribution. A
    `sequence` layout (features x frames, a spectrogram) is drawn with its first feature at the bottom."""
    plt = _pyplot()
    panels = 2 * len(maps) + 1
    fig, axes = plt.subplots(1, panels, figsize=(2.3 * panels, 2.4),
                             gridspec_kw={"width_ratios": [1] * (panels - 1) + [1.3]})
    axes = np.atleast_1d(axes)
    for k, (title, shown, attribution, layout) in enumerate(maps):
        ax_in, ax_attr = axes[2 * k], axes[2 * k + 1]
        origin = "lower" if layout == "sequence" else "upper"
        ax_in.imshow(shown, cmap="gray", aspect="auto", origin=origin)
        ax_in.set_title(title, fontsize=8)
        bound = float(np.abs(attribution).max()) or 1.0
        ax_attr.imshow(attribution, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", origin=origin)
        ax_attr.set_title(f"{title}: attribution", fontsize=8)
        for ax in (ax_in, ax_attr):
            ax.set_xticks([])
            ax.set_yticks([])
    ax = axes[-1]
    names = list(contributions)
    values = [contributions[m] if contributions[m] is not None else 0.0 for m in names]
    ax.barh(names, values, color=["#a4330f" if v > 0 else "#2459a8" for v in values])
    for y, m in enumerate(names):
        if contributions[m] is None:
            ax.annotate("absent", (0, y), fontsize=7, color="#5b6474", va="center")
    ax.axvline(0, color="#5b6474", linewidth=0.8)
    ax.set_title("contribution to P(predicted)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.invert_yaxis()
    return _png(fig)
