"""What the feature-attribution panels show: coloured word cells, hierarchy rows, level tables and heat maps.

Colours follow :mod:`wherefrom.features.plot`: blue = supports the explained class, red = opposes it, white = 0,
each strip or map on its own symmetric scale ``[−max|v|, +max|v|]``. Scores are kept as exact floats in the
``data-*`` attributes of the HTML (Python's shortest round-trip ``repr``), so a test or a reader can recover them.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
from PIL import Image

from wherefrom.features import Hierarchy
from wherefrom.report.feature_results import BASELINE_TITLES, hierarchy_from_dict
from wherefrom.report.figures import figure_base64, pyplot

BLUE, RED = (33, 102, 172), (178, 24, 43)


def heat_color(value: float | None, vmax: float) -> tuple[str, str]:
    """Background and text colour of a cell with ``value`` on the scale ``[−vmax, vmax]`` (None: no colour)."""
    if value is None or value != value or vmax <= 0:
        return "#ffffff", "#1f2328"
    t = min(1.0, abs(value) / vmax)
    r, g, b = (round(255 + (c - 255) * t) for c in (BLUE if value > 0 else RED))
    return f"rgb({r},{g},{b})", "#ffffff" if t > 0.6 else "#1f2328"


def _vmax(values: Any) -> float:
    a = np.abs(np.asarray(values, dtype=float))
    a = a[np.isfinite(a)]
    return float(a.max()) if a.size else 0.0


def label_of(value: Any, class_names: list[str] | None) -> str:
    """``class_names[value]`` for an integer in range, else the value itself (``—`` for None)."""
    if value is None:
        return "—"
    if isinstance(value, int) and class_names and 0 <= value < len(class_names):
        return str(class_names[value])
    return str(value)


def card_header(entry: dict[str, Any], class_names: list[str] | None) -> dict[str, Any]:
    """The fields every feature card shows: index, label, prediction, explained target, correctness, confidence."""
    label, prediction = entry.get("label"), entry.get("prediction")
    return {"index": entry["index"], "label": label_of(label, class_names),
            "predicted": label_of(prediction, class_names), "target": label_of(entry["target"], class_names),
            "correct": None if label is None else label == prediction, "confidence": entry.get("confidence")}


def words_of(entry: dict[str, Any]) -> list[str]:
    """The words of a text entry (``#t`` where the spec gave no vocabulary)."""
    n = len(entry["cd"])
    words = entry.get("words")
    return list(words) if words and len(words) == n else [f"#{t}" for t in range(n)]


def strip(scores: list[float], words: list[str]) -> list[dict[str, Any]]:
    """One cell per word: ``{unit, word, score, bg, fg}``."""
    vmax = _vmax(scores)
    cells = []
    for t, (w, s) in enumerate(zip(words, scores)):
        bg, fg = heat_color(s, vmax)
        cells.append({"unit": t, "word": w, "score": float(s), "bg": bg, "fg": fg})
    return cells


def text_rows(h: Hierarchy, words: list[str]) -> list[dict[str, Any]]:
    """The paper's text hierarchy (:meth:`Hierarchy.text_rows`), top level first; a row's runs are its components.

    Each run: ``{component, start, stop, words, score, units, bg, fg}`` with ``start``/``stop`` 1-based CSS grid
    columns.
    """
    rows = h.text_rows()
    vmax = _vmax([s for _, scores in rows for s in scores.values()])
    out = []
    for r, (comps, scores) in enumerate(rows):
        runs, t, n = [], 0, len(comps)
        while t < n:
            cid, start = int(comps[t]), t
            while t < n and int(comps[t]) == cid:
                t += 1
            if cid:
                bg, fg = heat_color(scores[cid], vmax)
                runs.append({"component": cid, "start": start + 1, "stop": t + 1, "words": words[start:t],
                             "score": float(scores[cid]), "units": list(range(start, t)), "bg": bg, "fg": fg})
        out.append({"row": r, "name": "words" if r == 0 else f"level {r}", "runs": runs})
    return out[::-1]


def level_table(h: Hierarchy, words: list[str] | None = None) -> list[dict[str, Any]]:
    """Every level of ``h`` exactly: ``{level, kind, n_selected, components: [{id, score, units, text}]}``.

    ``units`` are flat (row-major) unit indices; ``text`` the words of a text component, or its size.
    """
    out = []
    for k, lv in enumerate(h.levels):
        flat = lv.components.reshape(-1)
        comps = []
        for cid, score in sorted(lv.scores.items()):
            units = np.flatnonzero(flat == cid).tolist()
            text = " ".join(words[u] for u in units) if words is not None else f"{len(units)} blocks"
            bg, fg = heat_color(score, _vmax(list(lv.scores.values())))
            comps.append({"id": int(cid), "score": float(score), "units": units,
                          "units_attr": ",".join(map(str, units)), "text": text, "bg": bg, "fg": fg})
        out.append({"level": k, "kind": lv.kind, "n_selected": int(lv.selected.sum()), "components": comps})
    return out


def grey_png(image: list[list[float]], side: int = 112) -> str:
    """A ``[H, W]`` grey image in [0, 1] as base64 PNG, scaled (nearest) to ``side`` pixels."""
    pixels = np.clip(np.rint(np.asarray(image, dtype=float) * 255), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels).resize((side, round(side * pixels.shape[0] / pixels.shape[1])),
                                         Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def heat_map(values: list[list[float]], title: str) -> dict[str, Any]:
    """A ``[H_b, W_b]`` unit map as a matplotlib PNG (blue positive, red negative) with its exact values."""
    from matplotlib.colors import TwoSlopeNorm

    a = np.asarray(values, dtype=float)
    vmax = _vmax(a) or 1.0
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2.1, 2.1))
    im = ax.imshow(a, cmap="RdBu", norm=TwoSlopeNorm(0.0, -vmax, vmax), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
    fig.tight_layout()
    return {"title": title, "png": figure_base64(fig, dpi=90), "scores": json.dumps(a.tolist()),
            "grid": f"{a.shape[0]},{a.shape[1]}"}


def hierarchy_figure(h: Hierarchy, image: list[list[float]] | None, title: str) -> str:
    """The paper's image figure (:func:`wherefrom.features.plot.plot_image`) as base64 PNG."""
    if image is not None:
        h.image = np.asarray(image, dtype=float)
    return figure_base64(h.plot(title=title), dpi=80)


def baseline_rows(entry: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``(key, title, values)`` of the saved baselines, in the order of ``BASELINE_TITLES``."""
    saved = entry.get("baselines") or {}
    return [(k, t, saved[k]) for k, t in BASELINE_TITLES.items() if k in saved]


def hierarchy_of(entry: dict[str, Any]) -> Hierarchy:
    """The entry's saved hierarchy as a :class:`Hierarchy`."""
    return hierarchy_from_dict(entry["hierarchy"])
