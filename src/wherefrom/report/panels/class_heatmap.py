"""Panel: mean score of the training examples of class k on the test examples of class l (a heatmap)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from wherefrom.report.figures import figure_base64, plain_text, pyplot
from wherefrom.report.panels import register_panel


def class_contributions(scores: torch.Tensor, train_labels: torch.Tensor, test_labels: torch.Tensor,
                        ) -> tuple[np.ndarray, list[int], list[int]]:
    """``M[k, l] = mean_{i: y_i = k, j: y'_j = l} scores[i, j]`` over the classes present; (M, rows, cols).

    Computed as ``(Aᵀ S B) / (n_k m_l)`` with one-hot ``A [n_train, K]`` and ``B [m, L]``.
    """
    rows = sorted(set(train_labels.tolist()))
    cols = sorted(set(test_labels.tolist()))
    A = (train_labels.unsqueeze(1) == torch.tensor(rows).unsqueeze(0)).double()
    B = (test_labels.unsqueeze(1) == torch.tensor(cols).unsqueeze(0)).double()
    sums = A.T @ scores.double() @ B
    counts = A.sum(0).unsqueeze(1) * B.sum(0).unsqueeze(0)
    return (sums / counts).numpy(), rows, cols


@register_panel("class-heatmap", "Which training classes drive which test classes", order=30)
def build(data) -> dict[str, Any] | None:
    r = data.attribution
    labels = data.config.get("test_labels") or []
    if r is None or r.train_labels is None or not labels or not all(isinstance(v, int) for v in labels):
        return None
    M, rows, cols = class_contributions(r.scores, r.train_labels, torch.tensor(labels))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * len(cols) + 1.6, 1.0 + 0.42 * len(rows)))
    vmax = float(np.abs(M).max()) or 1.0
    im = ax.imshow(M, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(cols)), [plain_text(data.label_text(c)) for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [plain_text(data.label_text(c)) for c in rows])
    ax.set_xlabel("test class (true label)")
    ax.set_ylabel("training class")
    if len(rows) * len(cols) <= 150:
        for a in range(len(rows)):
            for b in range(len(cols)):
                ax.text(b, a, f"{M[a, b]:.1e}", ha="center", va="center", fontsize=6,
                        color="white" if abs(M[a, b]) > 0.6 * vmax else "black")
    fig.colorbar(im, ax=ax, label="mean score (positive = helpful)", shrink=0.8)
    fig.tight_layout()
    return {"image": figure_base64(fig), "n_rows": len(rows), "n_cols": len(cols)}
