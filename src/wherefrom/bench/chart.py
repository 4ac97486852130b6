"""The chart of a ``wherefrom bench`` run (matplotlib, no display needed).

Top panel: one group of bars per method, one bar per metric value (LOO Pearson / Spearman, LDS, AUC), the LDS bar
with its 95% interval as an error bar. A failed method has no bars: its name turns red and ``FAILED`` is written in
its slot; a failed metric is a red ``×`` in that metric's slot. Bottom panel: each method's time, ``fit`` and
``score`` stacked, on a log scale, with the total written above the bar.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from wherefrom.bench.results import BenchResult

FAILED = "#c0392b"


def plot_result(result: BenchResult, path: str) -> None:
    """Draw ``result`` to the PNG file ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    keys = [(label, key) for m in result.metrics for label, key in result.metric_columns(m) if m != "brittle"]
    n = max(1, len(rows))
    fig, (ax, axt) = plt.subplots(2, 1, figsize=(max(7.0, 0.9 * n * max(1, len(keys)) / 2 + 4), 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.6]})
    x = np.arange(len(rows))
    width = 0.8 / max(1, len(keys))
    offsets = [(k - (len(keys) - 1) / 2) * width for k in range(len(keys))]
    for k, (label, key) in enumerate(keys):
        vals = np.array([r.value(key) for r in rows], dtype=float)
        err = None
        is_lds = result.metric_of(key) == "lds"
        if is_lds:
            err = np.array([_half_width(r, key) for r in rows], dtype=float)
        ax.bar(x + offsets[k], np.nan_to_num(vals), width, label=label + (" (95% CI)" if is_lds else ""),
               yerr=None if err is None else np.nan_to_num(err), capsize=3 if err is not None else 0)
        metric = result.metric_of(key)
        for i, r in enumerate(rows):
            if r.error is None and metric in r.metric_errors:
                ax.text(x[i] + offsets[k], 0, "×", color=FAILED, ha="center", va="bottom", fontsize=14,
                        fontweight="bold")
            elif r.not_applicable(key):
                ax.text(x[i] + offsets[k], 0, "n/a", color="gray", ha="center", va="bottom", fontsize=7,
                        rotation=90)
    for i, r in enumerate(rows):
        if r.error is not None:
            ax.text(x[i], 0.02, "FAILED", color=FAILED, ha="center", va="bottom", rotation=90, fontweight="bold",
                    transform=ax.get_xaxis_transform())
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("metric")
    ok = sum(r.ok for r in rows)
    ax.set_title(f"wherefrom bench {result.setting['name']}: {ok} of {len(rows)} methods succeeded")
    if keys:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))

    fit = np.array([r.fit_s for r in rows], dtype=float)
    score = np.array([r.score_s for r in rows], dtype=float)
    fit_ok, score_ok = np.nan_to_num(fit), np.nan_to_num(score)
    axt.bar(x, fit_ok, 0.6, label="fit", color="#4c72b0")
    axt.bar(x, score_ok, 0.6, bottom=fit_ok, label="score", color="#a1c9f4")
    for i, total in enumerate(fit_ok + score_ok):
        if rows[i].error is None and total > 0:
            axt.text(x[i], total, _seconds(total), ha="center", va="bottom", fontsize=7)
        elif rows[i].error is not None:
            axt.text(x[i], 0.5, "failed", color=FAILED, ha="center", va="center", fontsize=8,
                     transform=axt.get_xaxis_transform())
    if np.any(fit_ok + score_ok > 0):
        axt.set_yscale("log")
    axt.set_ylabel("seconds")
    axt.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    axt.set_xticks(x)
    axt.set_xticklabels([r.method for r in rows], rotation=30, ha="right")
    for tick, r in zip(axt.get_xticklabels(), rows):
        if not r.ok:
            tick.set_color(FAILED)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _half_width(r, key: str = "lds") -> float:
    v = r.metrics.get(key)
    if not isinstance(v, dict) or not v.get("ci") or None in v["ci"]:
        return math.nan
    return (float(v["ci"][1]) - float(v["ci"][0])) / 2


def _seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 100 else (f"{s:.0f}s" if s < 600 else f"{s / 60:.0f}min")
