"""Panel: ``wherefrom bench`` results (a metric table and a bar chart per benchmark setting)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wherefrom.report.figures import figure_base64, plain_text, pyplot
from wherefrom.report.panels import register_panel

METRIC_LABELS = {"loo_pearson": "LOO Pearson", "loo_spearman": "LOO Spearman", "lds": "LDS",
                 "auc": "noisy-label AUC", "brittle_mean_k": "brittleness k"}
CHARTED = ("loo_pearson", "loo_spearman", "lds", "auc")


def _number(v: Any) -> float:
    if isinstance(v, dict):
        v = v.get("value")
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f


def _cell(metric: Any) -> str:
    v = _number(metric)
    if math.isnan(v):
        return "—"
    ci = metric.get("ci") if isinstance(metric, dict) else None
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        return f"{v:.3f} ± {(ci[1] - ci[0]) / 2:.3f}"
    return f"{v:.3f}"


def _chart(rows: list[dict[str, Any]], keys: list[str], title: str) -> str | None:
    keys = [k for k in keys if k in CHARTED]
    if not keys or not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(min(12, 3 + 0.6 * len(rows) * len(keys) / 2 + 2), 3.6))
    width = 0.8 / len(keys)
    x = np.arange(len(rows))
    for k, key in enumerate(keys):
        vals = [_number(r.get("metrics", {}).get(key)) for r in rows]
        ax.bar(x + k * width, [0 if math.isnan(v) else v for v in vals], width, label=METRIC_LABELS.get(key, key))
    ax.set_xticks(x + width * (len(keys) - 1) / 2, [plain_text(r.get("method", "?")) for r in rows],
                  rotation=30, ha="right")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(plain_text(title))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_base64(fig)


@register_panel("bench", "Benchmark results (wherefrom bench)", order=90)
def build(data) -> dict[str, Any] | None:
    if not data.bench:
        return None
    results = []
    for fname, result in data.bench:
        rows = [r for r in result["rows"] if isinstance(r, dict)]
        keys: list[str] = []
        for r in rows:
            for key, metric in (r.get("metrics") or {}).items():
                if key not in keys and not math.isnan(_number(metric)):
                    keys.append(key)
        setting = result["setting"].get("name", fname)
        table = [{"method": r.get("method", "?"), "error": (r.get("error") or "").splitlines()[:1],
                  "fit_s": _number(r.get("fit_s")), "score_s": _number(r.get("score_s")),
                  "peak_mb": _number(r.get("peak_mb")),
                  "cells": [_cell((r.get("metrics") or {}).get(k)) for k in keys]} for r in rows]
        results.append({"file": fname, "setting": setting, "columns": [METRIC_LABELS.get(k, k) for k in keys],
                        "rows": table, "chart": _chart(rows, keys, f"wherefrom bench {setting}")})
    return {"results": results}
