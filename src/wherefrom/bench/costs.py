"""Rough cost of each benchmark setting × method, measured once on a small CPU machine and shipped as a table.

The table (``wherefrom/_datafiles/bench_costs.json``) holds, per setting, the wall-clock seconds of its ground-truth
parts (reference model, all-points LOO, 100 LDS subsets, the noisy-label reference for AUC) and of each method's
``fit`` + ``score`` at the setting's default options, with the machine and the commands that measured them. It is
made by ``python scripts/bench_costs.py`` from the JSON files of ``wherefrom bench`` runs. The numbers are
**rough**: they were measured once, on a shared 2-core CPU under other load, and another machine (or load) differs
by a large factor; they exist to tell seconds from hours before starting a run.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

GROUND_TRUTH_PARTS = (("reference", "reference model"), ("loo", "LOO, every train point"),
                      ("lds", "LDS, 100 subsets"), ("auc", "noisy-label reference (auc)"))


@functools.lru_cache(maxsize=1)
def load_costs() -> dict[str, Any]:
    """The shipped cost table (see the module docs)."""
    path = resources.files("wherefrom") / "_datafiles" / "bench_costs.json"
    return json.loads(path.read_text())


def _entry(setting: str) -> dict[str, Any] | None:
    settings = load_costs()["settings"]
    entry = settings.get(setting)
    if entry is not None and "as" in entry:
        entry = settings.get(entry["as"])
    return entry


def method_seconds(setting: str, method: str) -> float | None:
    """Rough seconds of ``fit`` + ``score`` of ``method`` on the whole test set of ``setting`` (``None``: unknown).

    Score times measured on fewer test points are scaled linearly to the setting's test-set size.
    """
    entry = _entry(setting)
    if entry is None or method not in entry["methods"]:
        return None
    m = entry["methods"][method]
    scale = entry["n_test"] / m.get("n_test", entry["n_test"])
    return float(m["fit_s"]) + float(m["score_s"]) * scale


def measured_with_options(setting: str, method: str) -> bool:
    """Whether the measurement used options other than the setting's defaults (e.g. a smaller CG budget)."""
    entry = _entry(setting)
    return bool(entry and entry["methods"].get(method, {}).get("options"))


def ground_truth_seconds(setting: str, part: str) -> float | None:
    """Rough seconds to build one ground-truth part (``reference``, ``loo``, ``lds``, ``auc``) of ``setting``."""
    entry = _entry(setting)
    value = None if entry is None else entry["ground_truth"].get(part)
    return None if value is None else float(value)


def fmt_seconds(s: float | None) -> str:
    """``"<1 s"``, ``"40 s"``, ``"12 min"``, ``"2.8 h"`` or ``"?"``."""
    if s is None:
        return "?"
    if s < 1:
        return "<1 s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def cost_table() -> str:
    """The table ``wherefrom bench --list`` prints."""
    from wherefrom.registry import method_names

    costs = load_costs()
    settings = sorted(costs["settings"])
    width = max(12, *(len(s) + 2 for s in settings))
    head = f"  {'':30s}" + "".join(f"{s:>{width}s}" for s in settings)
    lines = [f"Rough cost (wall clock; {costs['machine']}; measured once, another machine or load differs a lot):",
             head, "  ground truth (built once, cached):"]
    for part, label in GROUND_TRUTH_PARTS:
        lines.append(f"    {label:28s}" + "".join(f"{fmt_seconds(ground_truth_seconds(s, part)):>{width}s}"
                                                for s in settings))
    lines.append("  methods (fit + score, whole test set):")
    for method in method_names():
        cells = [fmt_seconds(method_seconds(s, method)) + ("*" if measured_with_options(s, method) else " ")
                 for s in settings]
        lines.append(f"    {method:28s}" + "".join(f"{c:>{width}s}" for c in cells))
    lines += [f"  {note}" for note in costs.get("notes", [])]
    return "\n".join(lines)


def estimate(setting: str, methods: list[str], metrics: list[str]) -> tuple[float, float, list[str]]:
    """``(ground-truth seconds, method seconds, methods without a measurement)`` for a run, from the table.

    The ground truth counts every part the metrics need (it is cached: a rerun does not pay it again); the AUC
    metric fits each method a second time, on the noisy-label model.
    """
    parts = {"reference"} | ({"loo"} if "loo" in metrics else set()) | ({"lds"} if "lds" in metrics else set())
    if "auc" in metrics:
        parts.add("auc")
    gt = sum(ground_truth_seconds(setting, p) or 0.0 for p in parts)
    total, missing = 0.0, []
    for m in methods:
        sec = method_seconds(setting, m)
        if sec is None:
            missing.append(m)
        else:
            total += sec * (2 if "auc" in metrics else 1)
    return gt, total, missing
