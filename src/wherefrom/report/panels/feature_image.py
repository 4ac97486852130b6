"""Panel: feature attribution of image inputs — the CD heat map, the ACD hierarchy levels and optional baselines.

Reads ``features.json`` (written by ``wherefrom features``); see :mod:`wherefrom.report.feature_results`.
"""

from __future__ import annotations

from typing import Any

from wherefrom.report.feature_results import FeatureResults
from wherefrom.report.feature_views import (
    baseline_rows,
    card_header,
    grey_png,
    heat_map,
    hierarchy_figure,
    hierarchy_of,
    level_table,
)
from wherefrom.report.figures import plain_text
from wherefrom.report.panels import register_panel


@register_panel("feature-image", "Which pixels drove the prediction (CD, ACD)", order=45)
def build(data) -> dict[str, Any] | None:
    results = FeatureResults.load(data.directory)
    if results is None or not results.of_kind("image"):
        return None
    names = results.config.get("class_names")
    cards = []
    for e in results.of_kind("image"):
        h = hierarchy_of(e)
        header = card_header(e, names)
        title = f"ACD hierarchy ({h.method}), class {plain_text(header['target'])}"
        b = e.get("block_size", 1)
        unit = "pixel" if b == 1 else f"{b}×{b} block"
        maps = [dict(heat_map(e["cd"], f"CD, each {unit} alone"), key="cd")]
        maps += [dict(heat_map(v, t), key=k) for k, t, v in baseline_rows(e)]
        cards.append({
            **header, "image": grey_png(e["image"]) if e.get("image") else None,
            "maps": maps, "levels": level_table(h), "unit": unit, "grid": "×".join(map(str, h.grid)),
            "figure": hierarchy_figure(h, e.get("image"), title),
            "method": h.method,
        })
    return {"cards": cards, "options": results.config.get("options", {})}
