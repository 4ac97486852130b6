"""Panel: training examples ranked by self-influence (likely mislabelled or atypical)."""

from __future__ import annotations

from typing import Any

from wherefrom.report.panels import register_panel


@register_panel("self-influence", "Training examples ranked by self-influence", order=20)
def build(data) -> dict[str, Any] | None:
    r = data.attribution
    if r is None or r.self_influence is None:
        return None
    n = min(int(data.config.get("n_self_influence", 24)), r.self_influence.numel())
    values, indices = r.self_influence.topk(n)
    items = []
    for rank, (i, v) in enumerate(zip(indices.tolist(), values.tolist()), start=1):
        view = r.views["train"].get(i, {"kind": "index", "label": None})
        items.append({"rank": rank, "index": i, "value": v, "view": view, "label": data.label_text(view.get("label"))})
    median = float(r.self_influence.median())
    return {"items": items, "n_train": r.self_influence.numel(), "median": median}
