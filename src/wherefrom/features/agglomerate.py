"""Agglomeration (ACD): grow and merge groups of units by any group score, in 1-D (words) and 2-D (blocks).

The score is any callable ``score(groups) -> scores``: ``groups`` is a bool array ``[K, *grid]`` (one group per
row) and the result has K entries; higher means more important. Scores are cached per group, and each iteration
asks for all its groups in one call, so a CD scorer decomposes them in one vectorised pass.

The semantics follow the reference code (which produced the paper's figures); where it differs from the paper's
wording, and where wherefrom differs from the code, is documented in ``docs/features.md``:

1. Score every unit alone; select the units whose score reaches the ``percentile`` of the remaining scores.
2. Repeat ``num_iters`` times: find the connected components of the selection; score each component ``C``; for
   each unselected unit ``u`` next to ``C`` set its score to ``score(C ∪ {u}) − score(C)`` (when several components
   touch ``u`` the last one wins, as in the code); mark selected units NaN; threshold again and add the new units.
3. (2-D) Merge the final components pairwise — over all pairs, not only neighbours — taking the pair with the
   largest ``score(C1 ∪ C2) − max(score(C1), score(C2))`` until one component is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from wherefrom.features.hierarchy import Hierarchy, Level
from wherefrom.progress import track

ScoreFn = Callable[[np.ndarray], Any]

# 1-D: when five or fewer words remain, the reference code uses these percentiles (it always picks about two).
_SMALL_N_PERCENTILE = {5: 59.0, 4: 49.0, 3: 59.0, 2: 49.0, 1: 0.0}


class CachedScore:
    """Wrap ``score`` so that every group is scored at most once; ``calls`` counts the batched calls made."""

    def __init__(self, score: ScoreFn, grid: tuple[int, ...]):
        self.score, self.grid = score, grid
        self.cache: dict[bytes, float] = {}
        self.calls = 0

    def __call__(self, groups: np.ndarray) -> np.ndarray:
        groups = np.asarray(groups, dtype=bool).reshape(-1, *self.grid)
        keys = [g.tobytes() for g in groups]
        todo = sorted({k: i for i, k in enumerate(keys) if k not in self.cache}.values())
        if todo:
            values = np.asarray(self.score(groups[todo]), dtype=np.float64).reshape(-1)
            if values.shape[0] != len(todo):
                raise ValueError(f"score(groups) returned {values.shape[0]} values for {len(todo)} groups")
            self.calls += 1
            for i, v in zip(todo, values):
                self.cache[keys[i]] = float(v)
        return np.array([self.cache[k] for k in keys])


def per_group(score_one: Callable[[np.ndarray], float]) -> ScoreFn:
    """Turn a one-group score ``f(group) -> float`` into the batched ``score(groups) -> [K]`` convention."""
    return lambda groups: np.array([float(score_one(g)) for g in groups])


# --------------------------------------------------------------------------------------------- shared steps
def threshold_1d(scores: np.ndarray, percentile: float, absolute: bool) -> np.ndarray:
    """Units whose (absolute) running score reaches the percentile of the remaining (non-NaN) scores."""
    values = np.abs(scores) if absolute else scores
    valid = ~np.isnan(values)
    left = int(valid.sum())
    if left == 0:
        return np.zeros(values.shape, dtype=bool)
    p = _SMALL_N_PERCENTILE.get(left, percentile) if left <= 5 else percentile
    thresh = np.percentile(values[valid], p)
    return valid & (np.nan_to_num(values, nan=-np.inf) >= thresh)


def threshold_2d(scores: np.ndarray, percentile: float, absolute: bool = False) -> np.ndarray:
    """Blocks at or above the percentile of the remaining scores; ``p − 15`` once a third is selected, and
    ``p − 4`` steps until something is selected (reference ``threshold_scores``)."""
    values = np.abs(scores) if absolute else scores
    valid = ~np.isnan(values)
    if not valid.any():
        return np.zeros(values.shape, dtype=bool)
    p = percentile - 15 if (~valid).sum() > values.size / 3 else percentile
    filled = np.nan_to_num(values, nan=-np.inf)
    while True:
        picked = valid & (filled >= np.percentile(values[valid], max(p, 0.0)))
        if picked.any() or p <= 0:
            return picked
        p -= 4


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])


def smooth_2d(selected: np.ndarray) -> np.ndarray:
    """Add every unselected block with at least 3 of its 4 neighbours selected (one pass)."""
    count = ndimage.convolve(selected.astype(np.int64), _CROSS, mode="constant", cval=0)
    return selected | (~selected & (count >= 3))


def components(selected: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components: neighbours in 1-D, 8-connectivity in 2-D (``skimage.measure.label(connectivity=2)``)."""
    structure = None if selected.ndim == 1 else np.ones((3,) * selected.ndim)
    labels, n = ndimage.label(selected, structure=structure)
    return labels.astype(np.int64), int(n)


def stable_labels(raw: np.ndarray, n: int, previous: np.ndarray | None, next_id: int) -> tuple[np.ndarray, int]:
    """Keep component ids across levels: a component takes the smallest id of the earlier components it contains;
    a new one gets a fresh id. Returns the relabelled array and the next free id."""
    out = np.zeros_like(raw)
    for r in range(1, n + 1):
        where = raw == r
        old = [] if previous is None else [int(v) for v in np.unique(previous[where]) if v]
        if old:
            out[where] = min(old)
        else:
            out[where] = next_id
            next_id += 1
    return out, next_id


def _neighbours_1d(where: np.ndarray, selected: np.ndarray) -> list[int]:
    idx = np.flatnonzero(where)
    return [u for u in (idx[0] - 1, idx[-1] + 1) if 0 <= u < where.size and not selected[u]]


def _neighbours_2d(where: np.ndarray, selected: np.ndarray) -> list[tuple[int, int]]:
    grown = ndimage.binary_dilation(where, structure=_CROSS.astype(bool))
    return [tuple(map(int, rc)) for rc in np.argwhere(grown & ~selected)]


def _grow(score: CachedScore, selected: np.ndarray, previous: np.ndarray | None, next_id: int,
          running: np.ndarray, want_candidates: bool) -> tuple[Level, int, list[tuple[Any, float]]]:
    """Label and score the components of ``selected``; with ``want_candidates`` also score each component plus
    each of its free neighbours and return ``(unit, gain)`` pairs in processing order."""
    raw, n = components(selected)
    comps, next_id = stable_labels(raw, n, previous, next_id)
    ids = sorted(int(c) for c in np.unique(comps) if c)
    groups = [comps == c for c in ids]
    cand: list[tuple[int, Any]] = []
    if want_candidates:
        find = _neighbours_1d if selected.ndim == 1 else _neighbours_2d
        for k, g in enumerate(groups):
            cand.extend((k, u) for u in find(g, selected))
    batch = list(groups)
    for k, u in cand:
        g = groups[k].copy()
        g[u] = True
        batch.append(g)
    values = score(np.stack(batch)) if batch else np.zeros(0)
    comp_scores = {c: float(values[k]) for k, c in enumerate(ids)}
    gains = [(u, float(values[len(ids) + j] - values[k])) for j, (k, u) in enumerate(cand)]
    level = Level(selected.copy(), comps, comp_scores, running.copy(), "grow")
    return level, next_id, gains


def _iterate(score: CachedScore, initial: np.ndarray, select: Callable[[np.ndarray], np.ndarray],
             num_iters: int, smooth: bool, progress: bool | None) -> list[Level]:
    running = initial.copy()
    selected = select(running)
    levels: list[Level] = []
    previous, next_id = None, 1
    for it in track(range(num_iters + 1), desc="agglomerate", total=num_iters + 1, enabled=progress):
        last = it == num_iters or bool(selected.all())
        level, next_id, gains = _grow(score, selected, previous, next_id, running, want_candidates=not last)
        levels.append(level)
        if last:
            break
        for u, gain in gains:
            running[u] = gain
        running[selected] = np.nan
        new = select(running)
        if not new.any():
            break
        grown = selected | new
        if smooth:
            grown = smooth_2d(grown)
        previous, selected = level.components, grown
    return levels


# --------------------------------------------------------------------------------------------- public API
def agglomerate_1d(score: ScoreFn, n_units: int, percentile: float = 99.5, num_iters: int = 25,
                   absolute: bool = True, progress: bool | None = None) -> Hierarchy:
    """ACD over a sequence of ``n_units`` words with any ``score(groups [K, n_units]) -> [K]``.

    Thresholds use ``|score|`` when ``absolute`` (the reference text default); components grow by the word just
    left or right of them; the loop stops after ``num_iters`` iterations or when no word is added.
    """
    sc = CachedScore(score, (n_units,))
    full = float(sc(np.ones((1, n_units), dtype=bool))[0])
    initial = sc(np.eye(n_units, dtype=bool))
    levels = _iterate(sc, initial, lambda s: threshold_1d(s, percentile, absolute), num_iters, False, progress)
    params = {"percentile": percentile, "num_iters": num_iters, "absolute": absolute, "score_calls": sc.calls}
    return Hierarchy(levels, initial, full, params=params)


def agglomerate_2d(score: ScoreFn, grid: tuple[int, int], percentile: float = 99.0, num_iters: int = 5,
                   absolute: bool = False, smooth: bool = True, final_merge: bool = True,
                   progress: bool | None = None) -> Hierarchy:
    """ACD over a ``grid`` of blocks with any ``score(groups [K, H, W]) -> [K]``.

    Signed scores by default (``absolute=False``, the reference image default). Components are 8-connected,
    candidates are the 4-neighbours of a component; ``smooth`` adds blocks surrounded on 3 sides; ``final_merge``
    merges the last components over all pairs until one is left.
    """
    rows, cols = grid
    sc = CachedScore(score, (rows, cols))
    full = float(sc(np.ones((1, rows, cols), dtype=bool))[0])
    initial = sc(np.eye(rows * cols, dtype=bool).reshape(-1, rows, cols)).reshape(rows, cols)
    levels = _iterate(sc, initial, lambda s: threshold_2d(s, percentile, absolute), num_iters, smooth, progress)
    if final_merge:
        levels.extend(merge_all_pairs(sc, levels[-1]))
    params = {"percentile": percentile, "num_iters": num_iters, "absolute": absolute, "smooth": smooth,
              "final_merge": final_merge, "score_calls": sc.calls}
    return Hierarchy(levels, initial, full, params=params)


def merge_all_pairs(score: ScoreFn, start: Level) -> list[Level]:
    """Merge components pairwise until one is left, each time the pair with the largest
    ``score(C1 ∪ C2) − max(score(C1), score(C2))``; one ``"merge"`` level per merge (first best pair on ties).
    The merged component keeps the id of the better-scoring of the two."""
    comps, scores = start.components.copy(), dict(start.scores)
    levels = []
    while len(scores) > 1:
        ids = sorted(scores)
        pairs = [(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]]
        unions = score(np.stack([(comps == a) | (comps == b) for a, b in pairs]))
        gains = [u - max(scores[a], scores[b]) for u, (a, b) in zip(unions, pairs)]
        best = int(np.argmax(gains))
        a, b = pairs[best]
        if scores[b] > scores[a]:                      # the merged blob keeps the id of the better-scoring one
            a, b = b, a
        comps = comps.copy()
        comps[comps == b] = a
        scores = {k: v for k, v in scores.items() if k != b}
        scores[a] = float(unions[best])
        levels.append(Level(start.selected.copy(), comps, dict(scores), None, "merge"))
    return levels
