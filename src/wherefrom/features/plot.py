"""Figures of ACD hierarchies (matplotlib, imported only when plotting).

* Text (paper Fig. 2): a heatmap with one row per hierarchy level, words at the bottom; each cell is coloured by
  the score of the component covering that word at that level (blue = supports the target, red = against it,
  white = no component). Components are outlined.
* Images (paper Fig. 3): row 1 the image, the single-block scores and the selection order; row 2 the components
  ("blobs") after each iteration; row 3 every blob's score against the iteration (merges continue the axis).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wherefrom.features.hierarchy import Hierarchy


def _pyplot() -> Any:
    import matplotlib.pyplot as plt  # picks a non-interactive backend when there is no display

    return plt


def _runs(comps: np.ndarray) -> list[tuple[int, int, int]]:
    """``(id, start, stop)`` of every maximal run of one non-zero id."""
    out, start = [], 0
    for t in range(1, comps.size + 1):
        if t == comps.size or comps[t] != comps[start]:
            if comps[start]:
                out.append((int(comps[start]), start, t))
            start = t
    return out


def plot_text(h: Hierarchy, collapse: bool = True, cmap: str = "RdBu", title: str | None = None,
              class_names: list[str] | None = None, figsize: tuple[float, float] | None = None,
              fontsize: float = 9, **_: Any) -> Any:
    """Text heatmap; ``collapse`` merges iterations into levels (see :meth:`Hierarchy.text_rows`)."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    words = h.labels or [str(i) for i in range(h.grid[0])]
    if collapse:
        rows = h.text_rows()
    else:
        rows = [(np.arange(1, len(words) + 1), {i + 1: float(s) for i, s in enumerate(h.unit_scores)})]
        rows += [(lv.components, lv.scores) for lv in h.levels]
    values = np.full((len(rows), len(words)), np.nan)
    for r, (comps, scores) in enumerate(rows):
        for cid, s in scores.items():
            values[r, comps == cid] = s
    vmax = float(np.nanmax(np.abs(values))) or 1.0
    width = max(6.0, 0.7 * len(words))
    fig, ax = plt.subplots(figsize=figsize or (width, 0.5 * len(rows) + 1.4))
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=TwoSlopeNorm(0.0, -vmax, vmax), aspect="auto",
                   origin="lower", interpolation="nearest")
    for r, (comps, _scores) in enumerate(rows):
        for _cid, a, b in _runs(np.asarray(comps)):
            ax.add_patch(Rectangle((a - 0.5, r - 0.5), b - a, 1, fill=False, lw=0.8, ec="0.3"))
            for t in range(a, b):
                dark = abs(values[r, t]) > 0.6 * vmax
                size = fontsize * min(1.0, 9.0 / max(len(words[t]), 1))       # shrink long words to fit
                ax.text(t, r, words[t], ha="center", va="center", fontsize=size,
                        color="white" if dark else "black")
    ax.set_xticks([])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(["words"] + [f"level {r}" for r in range(1, len(rows))])
    cls = class_names[h.target] if class_names and h.target is not None else h.target
    contrast = " vs. rest" if h.params.get("contrast") else ""
    ax.set_title(title or f"ACD ({h.method}) — score of class {cls}{contrast}; blue supports it, red opposes")
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01)
    fig.tight_layout()
    return fig


def plot_image(h: Hierarchy, max_levels: int = 8, cmap: str = "RdBu", title: str | None = None,
               figsize: tuple[float, float] | None = None, **_: Any) -> Any:
    """Three-row image figure: image and block scores; blobs per iteration; blob scores against iteration."""
    plt = _pyplot()
    from matplotlib.colors import ListedColormap, TwoSlopeNorm

    grow = h.grow_levels
    picks = list(range(len(grow))) if len(grow) <= max_levels else \
        sorted(set(np.linspace(0, len(grow) - 1, max_levels).round().astype(int).tolist()))
    cols = max(4, len(picks))
    fig = plt.figure(figsize=figsize or (1.7 * cols, 6.2))
    grid = fig.add_gridspec(3, cols, height_ratios=[1, 1, 1.1])

    def blocks(a: np.ndarray) -> np.ndarray:
        return np.kron(a, np.ones((h.block_size, h.block_size)))[:h.image.shape[0], :h.image.shape[1]] \
            if h.image is not None and h.block_size > 1 else a

    ax = fig.add_subplot(grid[0, 0])
    if h.image is not None:
        ax.imshow(h.image, cmap="gray")
    ax.set_title(f"input (class {h.target})", fontsize=9)
    ax = fig.add_subplot(grid[0, 1])
    vmax = float(np.nanmax(np.abs(h.unit_scores))) or 1.0
    im = ax.imshow(blocks(h.unit_scores), cmap=cmap, norm=TwoSlopeNorm(0.0, -vmax, vmax))
    ax.set_title(f"{h.method} score, each block", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax = fig.add_subplot(grid[0, 2])
    order = h.order().astype(float)
    order[order >= len(grow)] = np.nan
    im = ax.imshow(blocks(order), cmap="viridis_r")
    ax.set_title("iteration added", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    ax = fig.add_subplot(grid[0, 3])
    if h.image is not None:
        ax.imshow(h.image, cmap="gray")
    top = h.top().components > 0
    ax.imshow(np.ma.masked_where(~blocks(top.astype(float)).astype(bool), blocks(top.astype(float))),
              cmap=ListedColormap(["tab:orange"]), alpha=0.55)
    ax.set_title(f"final blob: {h.top().scores and max(h.top().scores.values()):.2f}", fontsize=9)
    for a in fig.axes:
        a.set_xticks([])
        a.set_yticks([])

    palette = plt.get_cmap("tab20")
    max_id = max([int(lv.components.max()) for lv in h.levels] + [1])
    colours = ListedColormap(["white"] + [palette(i % 20) for i in range(max_id)])
    for j, k in enumerate(picks):
        lv = grow[k]
        ax = fig.add_subplot(grid[1, j])
        ax.imshow(blocks(lv.components.astype(float)), cmap=colours, vmin=-0.5, vmax=max_id + 0.5,
                  interpolation="nearest")
        ax.set_title(f"iter {k}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])

    ax = fig.add_subplot(grid[2, :])
    ids = sorted({cid for lv in h.levels for cid in lv.scores})
    for cid in ids:
        xs = [k for k, lv in enumerate(h.levels) if cid in lv.scores]
        ys = [h.levels[k].scores[cid] for k in xs]
        ax.plot(xs, ys, "o-", ms=3, color=palette((cid - 1) % 20), label=f"blob {cid}")
    if len(grow) < len(h.levels):
        ax.axvline(len(grow) - 0.5, color="0.5", ls="--", lw=0.8)
        ax.text(len(grow) - 0.4, 0.5, " final merges →", transform=ax.get_xaxis_transform(), va="center",
                fontsize=8, color="0.4")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"blob score ({h.method})")
    if len(ids) <= 12:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle(title or f"ACD hierarchy ({h.method}), class {h.target}", fontsize=11)
    fig.tight_layout()
    return fig
