"""Panel: feature attribution of token inputs — the CD heat strip, the ACD hierarchy and optional baselines.

Reads ``features.json`` (written by ``wherefrom features``); see :mod:`wherefrom.report.feature_results`.
"""

from __future__ import annotations

from typing import Any

from wherefrom.report.feature_results import FeatureResults
from wherefrom.report.feature_views import (
    baseline_rows,
    card_header,
    hierarchy_of,
    level_table,
    strip,
    text_rows,
    words_of,
)
from wherefrom.report.panels import register_panel


@register_panel("feature-text", "Which words drove the prediction (CD, ACD)", order=40)
def build(data) -> dict[str, Any] | None:
    results = FeatureResults.load(data.directory)
    if results is None or not results.of_kind("text"):
        return None
    names = results.config.get("class_names")
    cards = []
    for e in results.of_kind("text"):
        words = words_of(e)
        h = hierarchy_of(e)
        cards.append({
            **card_header(e, names), "contrast": e.get("contrast"),
            "strips": [{"key": "cd", "title": "CD", "cells": strip(e["cd"], words)}]
            + [{"key": k, "title": t, "cells": strip(v, words)} for k, t, v in baseline_rows(e)],
            "rows": text_rows(h, words), "levels": level_table(h, words), "n_words": len(words),
            "method": h.method,
        })
    return {"cards": cards, "options": results.config.get("options", {})}
