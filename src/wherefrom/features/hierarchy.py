"""The result of an agglomeration: levels of growing, then merging, components of units (words or blocks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Level:
    """One level of the hierarchy.

    ``selected``: bool ``[*grid]``, the units selected so far. ``components``: int ``[*grid]``, the connected
    components of ``selected`` (0 = not selected); every level partitions the selected units. ``scores``: component
    id -> score of the component as one group. ``unit_scores``: float ``[*grid]``, the running unit scores the
    selection was drawn from (NaN = selected earlier); ``None`` on merge levels. ``kind``: ``"grow"`` (a
    thresholding iteration) or ``"merge"`` (one step of the final merge of two components).
    """

    selected: np.ndarray
    components: np.ndarray
    scores: dict[int, float]
    unit_scores: np.ndarray | None
    kind: str = "grow"


@dataclass
class Hierarchy:
    """An ACD hierarchy of one input. ``grid`` is ``(T,)`` for text, ``(H_blocks, W_blocks)`` for images.

    ``unit_scores`` holds the score of every unit alone, ``full_score`` the score of all units together.
    ``labels`` are the words of a text input; ``image`` a ``[H, W]`` picture of an image input (for plots).
    """

    levels: list[Level]
    unit_scores: np.ndarray
    full_score: float
    method: str = "cd"
    target: int | None = None
    block_size: int = 1
    labels: list[str] | None = None
    image: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.unit_scores.shape)

    @property
    def is_text(self) -> bool:
        return self.unit_scores.ndim == 1

    @property
    def grow_levels(self) -> list[Level]:
        return [lv for lv in self.levels if lv.kind == "grow"]

    def order(self) -> np.ndarray:
        """For every unit, the iteration (grow-level index) at which it was first selected; ``int [*grid]``.

        Units never selected get ``len(self.grow_levels)`` (one past the last iteration).
        """
        grow = self.grow_levels
        out = np.full(self.grid, len(grow), dtype=np.int64)
        for k in range(len(grow) - 1, -1, -1):
            out[grow[k].selected] = k
        return out

    def top(self) -> Level:
        """The last level (after the final merge, if any)."""
        return self.levels[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: arrays as nested lists, NaN as ``None``."""
        def arr(a: np.ndarray | None) -> Any:
            if a is None:
                return None
            if a.dtype.kind == "f":
                return np.where(np.isnan(a), None, a.astype(object)).tolist()
            return a.tolist()

        return {
            "method": self.method, "target": self.target, "block_size": self.block_size, "grid": list(self.grid),
            "full_score": float(self.full_score), "unit_scores": arr(self.unit_scores), "labels": self.labels,
            "params": self.params, "order": self.order().tolist(),
            "levels": [{"kind": lv.kind, "selected": lv.selected.tolist(), "components": lv.components.tolist(),
                        "scores": {str(k): float(v) for k, v in lv.scores.items()},
                        "unit_scores": arr(lv.unit_scores)} for lv in self.levels],
        }

    def text_rows(self) -> list[tuple[np.ndarray, dict[int, float]]]:
        """Collapsed rows for the text heatmap: ``[(components [T], {id: score}), ...]``, bottom row first.

        Row 0 holds every word alone. A multi-word component goes to row 1 if no earlier multi-word component lies
        inside it, to the row of that component if it contains exactly one (it grew), and one row above the highest
        of them if it contains several (it merged them). A row shows the latest extent of each of its components.
        """
        if not self.is_text:
            raise ValueError("text_rows is for 1-D (text) hierarchies")
        n = self.grid[0]
        rows: list[tuple[np.ndarray, dict[int, float]]] = [(np.arange(1, n + 1), {
            i + 1: float(s) for i, s in enumerate(self.unit_scores)})]
        row_of: dict[int, int] = {}
        prev = np.zeros(n, dtype=np.int64)
        for lv in self.levels:
            new_row_of: dict[int, int] = {}
            for cid, score in lv.scores.items():
                where = lv.components == cid
                if where.sum() == 1:
                    new_row_of[cid] = 0
                    continue
                inside = [int(p) for p in np.unique(prev[where]) if p]
                grown = [p for p in inside if row_of.get(p, 0) > 0]
                if not grown:
                    row = 1
                elif len(grown) == 1:
                    row = row_of[grown[0]]
                else:
                    row = max(row_of[p] for p in grown) + 1
                new_row_of[cid] = row
                while len(rows) <= row:
                    rows.append((np.zeros(n, dtype=np.int64), {}))
                comps, scores = rows[row]
                for old in np.unique(comps[where]):
                    if old:
                        comps[comps == old] = 0
                        scores.pop(int(old), None)
                comps[where] = cid
                scores[cid] = float(score)
            row_of, prev = new_row_of, lv.components
        return rows

    def plot(self, path: str | None = None, **kwargs: Any) -> Any:
        """Draw the paper's figure: the text heatmap (one row per level) or the image rows; returns the Figure.

        With ``path`` the figure is also saved there (PNG, SVG, ... by extension). See :mod:`.plot` for options.
        """
        from wherefrom.features import plot as _plot

        fig = _plot.plot_text(self, **kwargs) if self.is_text else _plot.plot_image(self, **kwargs)
        if path is not None:
            fig.savefig(path, dpi=kwargs.get("dpi", 150), bbox_inches="tight")
        return fig
