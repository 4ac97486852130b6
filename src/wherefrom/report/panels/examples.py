"""Panel: each selected test example with its most helpful and most harmful training examples."""

from __future__ import annotations

from typing import Any

from wherefrom.report.panels import register_panel


def explain(score: float, config: dict[str, Any]) -> str:
    """The score ``scores[i, j]`` in words (positive = helpful; see docs/conventions.md)."""
    amount = f"{abs(score):.3g}"
    if config.get("score_scale") == "leave-one-out":
        if config.get("target", "loss") == "loss":
            verb = "raise" if score > 0 else "lower"
            return f"Removing this training example is predicted to {verb} the test loss by {amount}."
        verb = "lower" if score > 0 else "raise"
        return f"Removing this training example is predicted to {verb} the explained test quantity by {amount}."
    effect = "helped" if score > 0 else "hurt" if score < 0 else "did not affect"
    return (f"By {config.get('method', 'the method')}'s measure this training example {effect} this prediction "
            f"(score {score:+.3g}, in the method's own units, not a predicted change of the loss).")


def _items(data, role: str, indices, values, j: int) -> list[dict[str, Any]]:
    config = data.config
    out = []
    for rank, (i, v) in enumerate(zip(indices[j].tolist(), values[j].tolist()), start=1):
        view = data.attribution.views["train"].get(i, {"kind": "index", "label": None})
        out.append({"role": role, "rank": rank, "index": i, "score": v, "view": view,
                    "label": data.label_text(view.get("label")), "explanation": explain(v, config)})
    return out


@register_panel("examples", "Test predictions and the training examples behind them", order=10)
def build(data) -> dict[str, Any] | None:
    if data.attribution is None:
        return None
    r, config = data.attribution, data.config
    cards = []
    for j, t in enumerate(config["test_indices"]):
        true, pred = config["test_labels"][j], config["test_predictions"][j]
        conf = config["test_confidence"][j]
        view = r.views["test"].get(t, {"kind": "index", "label": true})
        cards.append({
            "position": j, "index": t, "view": view,
            "true": data.label_text(true), "predicted": data.label_text(pred),
            "correct": None if true is None or isinstance(pred, float) else true == pred, "confidence": conf,
            "helpful": _items(data, "helpful", r.top.helpful_indices, r.top.helpful_values, j),
            "harmful": _items(data, "harmful", r.top.harmful_indices, r.top.harmful_values, j),
        })
    n_wrong = sum(1 for c in cards if c["correct"] is False)
    return {"cards": cards, "k": config["top_k"], "n_wrong": n_wrong,
            "loo": config.get("score_scale") == "leave-one-out", "target": config.get("target", "loss")}
