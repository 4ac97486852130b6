"""Matplotlib figures embedded in the report as base64 PNG (no files, no network)."""

from __future__ import annotations

import base64
import io
from typing import Any


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_base64(fig: Any, dpi: int = 110) -> str:
    """Encode a matplotlib figure as base64 PNG (no timestamps or version metadata: reproducible bytes), close it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plain_text(label: str, width: int = 18) -> str:
    """A label safe for matplotlib text (``$`` would start mathtext), cut to ``width`` characters."""
    text = str(label)
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("$", r"\$")
