"""Panel: the recorded training run behind trajectory attribution (HYDRA).

HYDRA scores an example by following the optimizer steps of the recorded run, so its score comes from the steps
whose mini-batch held the example. When the attributor has a recorded run, ``wherefrom attribute`` saves
:func:`training_run_summary` in ``results.json`` (``config["training_run"]``); this panel shows the run (optimizer,
steps, learning-rate schedule) and, for each explained test example, the steps at which its most helpful and most
harmful training examples were used, with the learning rate of those steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from wherefrom.report.panels import register_panel

MAX_POINTS = 240  # learning-rate points kept for the schedule drawing
MAX_STEPS_LISTED = 12  # steps listed per training example (the rest are counted)
PER_SIDE = 3  # helpful / harmful examples listed per test example


def training_run_summary(trajectory: Any, indices: Iterable[int]) -> dict[str, Any]:
    """What the panel needs from a recorded run, as plain JSON data.

    Args:
        trajectory: a :class:`~wherefrom.trajectory.Trajectory` (read step by step, without ``θ_t``).
        indices: the training indices whose steps are listed (the shown helpful / harmful examples).
    Returns:
        ``{"optimizer", "steps", "n_groups", "lr": [[t, η_t], ...] (param group 0, at most MAX_POINTS points),
        "lr_min", "lr_max", "batch_min", "batch_max", "steps_of": {str(i): [t, ...]}}``.
    """
    wanted = {int(i) for i in indices}
    steps_of: dict[int, list[int]] = {i: [] for i in wanted}
    lrs: list[float] = []
    sizes: list[int] = []
    for step in trajectory.steps(with_theta=False):
        lrs.append(float(step.hyper["lr"][0]))
        batch = step.indices.tolist()
        sizes.append(len(batch))
        for i in wanted.intersection(batch):
            steps_of[i].append(step.t)
    stride = max(1, -(-len(lrs) // MAX_POINTS))
    points = [[t, lrs[t]] for t in range(0, len(lrs), stride)]
    if lrs and points[-1][0] != len(lrs) - 1:
        points.append([len(lrs) - 1, lrs[-1]])
    return {"optimizer": trajectory.optimizer, "steps": len(lrs), "n_groups": trajectory.n_groups, "lr": points,
            "lr_min": min(lrs, default=0.0), "lr_max": max(lrs, default=0.0), "batch_min": min(sizes, default=0),
            "batch_max": max(sizes, default=0), "steps_of": {str(i): s for i, s in sorted(steps_of.items())}}


def _schedule_svg(points: list[list[float]], steps: int, width: int = 480, height: int = 70) -> str:
    """An inline SVG polyline of the learning rate over the steps (numbers only: safe to mark up)."""
    if not points:
        return ""
    top = max(p[1] for p in points) or 1.0
    span = max(1, steps - 1)
    xy = " ".join(f"{4 + (width - 8) * t / span:.1f},{height - 4 - (height - 8) * v / top:.1f}" for t, v in points)
    return (f'<svg class="lr-schedule" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="learning rate over the steps"><polyline fill="none" stroke="#4c72b0" '
            f'stroke-width="1.5" points="{xy}"/></svg>')


@register_panel("training-run", "The recorded training run", order=35)
def build(data) -> dict[str, Any] | None:
    run = data.config.get("training_run")
    r = data.attribution
    if r is None or not run:
        return None
    lr_at = dict((int(t), v) for t, v in run["lr"])
    steps_of = run["steps_of"]

    def item(i: int, score: float) -> dict[str, Any]:
        steps = steps_of.get(str(i), [])
        lrs = [lr_at[t] for t in steps if t in lr_at]
        view = r.views["train"].get(i, {"kind": "index", "label": None})
        return {"index": i, "score": score, "label": data.label_text(view.get("label")), "n_steps": len(steps),
                "steps": steps[:MAX_STEPS_LISTED], "more": max(0, len(steps) - MAX_STEPS_LISTED),
                "last": steps[-1] if steps else None, "lr": lrs[0] if len(set(lrs)) == 1 else None}

    rows = []
    for pos, j in enumerate(data.config.get("test_indices", [])):
        helpful = [item(int(i), float(v)) for i, v in zip(r.top.helpful_indices[pos, :PER_SIDE].tolist(),
                                                          r.top.helpful_values[pos, :PER_SIDE].tolist())]
        harmful = [item(int(i), float(v)) for i, v in zip(r.top.harmful_indices[pos, :PER_SIDE].tolist(),
                                                          r.top.harmful_values[pos, :PER_SIDE].tolist())]
        rows.append({"index": j, "helpful": helpful, "harmful": harmful})
    return {"run": run, "rows": rows, "svg": _schedule_svg(run["lr"], run["steps"])}
