"""A memory and disk planner: peak memory and disk per stage of a featurise → store → score run, before running it.

Counted per stage (bytes; ``s`` the stored dtype's size, ``B`` the batch, ``R`` the rows per chunk (at most ``n``),
``m`` test points, ``k`` the top-k, ``p`` parameters, ``d`` the feature dimension, ``c`` checkpoints)::

    featurise        model 3·p·4 (parameters, gradients, a copy of the state) + per-example work
                     (full gradients: B·p·4 twice — the gradients and their projection input; layer-wise
                     (LoGra) sources: B·Σ_l (a_l + g_l)·4 captures) + B·d·4 features + a chunk held 4 times,
                     4·R·d·s (its batch parts, their concatenation, the checksum's bytes, the compressed output)
    store (disk)     c·n·d·s (before compression; zstd saves little on dense float features)
    preconditioner   kernel / explicit solvers on features: 2·d²·8 (matrix and its factor), identity: 0
    queries          m·d·(4 + 8) per checkpoint (features and preconditioned features)
    reading          a chunk compressed, decoded and copied out 3·R·d·s, and the previous block, still referenced
                     while the next is read, R·d·max(s, 4) (per checkpoint)
    top-k            reading + one block of scores R·m·4 and the running top-k 2·(R + k)·m·12 while merging;
                     FAISS exact: reading + the folded float32 rows R·d·4 (none for an unweighted float32 store;
                     R·d·20 with float64 weighting, for weighted rows or several checkpoints) + 2·m·k·12
    self-influence   reading + the chunk's solve R·d·8, the output n·4

plus the process baseline (Python, torch, zarr, faiss: :data:`BASELINE_BYTES`, measured on this library's CI
machine). Peak memory of a stage is the baseline plus its terms; the run's peak is the largest stage.
``plan`` never grows with ``n`` except through the disk, the dense ``n``-vector of self-influence, and an
approximate FAISS index (``n·d·4``) when one is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from wherefrom.errors import WherefromError

BASELINE_BYTES = 350_000_000


@dataclass
class Stage:
    """One stage: its peak memory above the baseline and the disk it writes (bytes), and how they were counted."""

    name: str
    memory: int
    disk: int = 0
    terms: dict[str, int] = field(default_factory=dict)


@dataclass
class Plan:
    """Predicted peak memory (bytes, baseline included) and disk per stage; ``str(plan)`` is a table."""

    stages: list[Stage]
    baseline: int = BASELINE_BYTES

    @property
    def peak_memory(self) -> int:
        return self.baseline + max(s.memory for s in self.stages)

    @property
    def disk(self) -> int:
        return sum(s.disk for s in self.stages)

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise WherefromError(f"No stage {name!r}; stages are {[s.name for s in self.stages]}.")

    def as_dict(self) -> dict[str, Any]:
        return {"peak_memory": self.peak_memory, "disk": self.disk, "baseline": self.baseline,
                "stages": {s.name: {"memory": self.baseline + s.memory, "disk": s.disk, "terms": s.terms}
                           for s in self.stages}}

    def __str__(self) -> str:
        lines = [f"{'stage':16s} {'peak memory':>12s} {'disk':>10s}"]
        for s in self.stages:
            lines.append(f"{s.name:16s} {format_bytes(self.baseline + s.memory):>12s} {format_bytes(s.disk):>10s}")
        lines.append(f"{'run':16s} {format_bytes(self.peak_memory):>12s} {format_bytes(self.disk):>10s}")
        return "\n".join(lines)


def format_bytes(n: float) -> str:
    """``1.5e9`` -> ``'1.50 GB'`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def _layer_widths(task: Any) -> int:
    """``Σ_l (a_l + g_l)`` over the selected Linear / Conv layers with a weight (what layer captures hold per
    example: inputs with a bias column, output gradients)."""
    selected = set(task.param_names)
    total = 0
    for name, module in task.model.named_modules():
        prefix = f"{name}." if name else ""
        weight = getattr(module, "weight", None)
        if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)) or f"{prefix}weight" not in selected:
            continue
        total += weight[0].numel() + 1 + weight.shape[0]
    return total


def _weighted(att: Any) -> bool:
    """Whether the attributor's training rows carry weights (row weights, or a similarity with row factors)."""
    if att is None:
        return False
    if getattr(att, "train_weights", None) is not None:
        return True
    return getattr(getattr(att, "similarity", None), "name", "dot") != "dot"


def plan(task_or_attributor: Any, n_train: int, *, n_test: int = 1000, k: int = 10, dim: int | None = None,
         batch_size: int | None = None, chunk_rows: int | None = None, dtype: torch.dtype | str | None = None,
         checkpoints: int | None = None, layerwise: bool | None = None, preconditioner: str | None = None,
         faiss_index: str = "exact", weighted_rows: bool | None = None) -> Plan:
    """Predict peak memory and disk per stage (see the module docstring).

    ``task_or_attributor``: a :class:`~wherefrom.Task` (then give ``dim``; ``layerwise=True`` for LoGra-style
    sources) or a constructed (not necessarily fitted) composed attributor, from which ``dim``, the batch size,
    the chunk rows, the dtype, the checkpoints, the source kind, the preconditioner and whether training rows are
    weighted (``weighted_rows``: TRAK's ``1 − p``, Grad-Cos's norms) are read.
    """
    from wherefrom.task import Task

    if isinstance(task_or_attributor, Task):
        task, att = task_or_attributor, None
    elif isinstance(getattr(task_or_attributor, "task", None), Task):
        task, att = task_or_attributor.task, task_or_attributor
    else:
        raise WherefromError("plan() takes a wherefrom.Task or a gradient attributor as its first argument, got "
                             f"{type(task_or_attributor).__name__}.")
    if not isinstance(n_train, int) or n_train < 1:
        raise WherefromError(f"n_train must be a positive integer, got {n_train!r}.")
    p = task.num_params
    ex = getattr(att, "execution", None)
    if dim is None:
        dim = getattr(getattr(att, "source", None), "dim", None)
        if dim is None:
            raise WherefromError("plan(task, ...) needs dim= (the feature dimension; p for full gradients).")
    batch_size = batch_size or (ex.batch_size if ex is not None else 256)
    if chunk_rows is None:
        from wherefrom.scale.featurize import chunk_rows_for

        chunk_rows = chunk_rows_for(ex.rows_per_block if ex is not None else 1024, batch_size)
    dtype = dtype or (ex.dtype if ex is not None and ex.dtype is not None else task.dtype)
    s = torch.empty((), dtype=dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))).element_size()
    n_ckpt = checkpoints or max(1, len(getattr(att, "checkpoints", None) or []))
    if layerwise is None:
        layerwise = type(getattr(att, "source", None)).__name__ == "KroneckerProjectedGradients"
    if preconditioner is None:
        preconditioner = getattr(getattr(att, "preconditioner", None), "name", "identity")
    R, m, d, n = min(chunk_rows, n_train), n_test, int(dim), n_train  # no chunk holds more than n rows

    per_example = batch_size * _layer_widths(task) * 4 if layerwise else 2 * batch_size * p * 4
    featurise = {"model (parameters, gradients, state)": 3 * p * 4, "per-example work": per_example,
                 "batch features": batch_size * d * 4,
                 "chunk (parts, joined, checksum bytes, compressed)": 4 * R * d * s}
    precond = 0 if preconditioner in ("identity", "diagonal") else 2 * d * d * 8
    queries = n_ckpt * m * d * 12
    read = {"chunk read (compressed, decoded, copied out)": 3 * n_ckpt * R * d * s,
            "previous block (held while the next is read)": n_ckpt * R * d * max(s, 4)}
    if faiss_index == "exact":
        weighted = weighted_rows if weighted_rows is not None else _weighted(att)
        folded = R * d * n_ckpt * (4 + 16 if weighted or n_ckpt > 1 else (4 if s != 4 else 0))
        top = {"queries": queries, **read, "folded float32 rows (float64 while weighting)": folded,
               "running top-k": 2 * 2 * m * k * 12}
    else:
        top = {"queries": queries, "approximate index (all rows)": n * d * n_ckpt * 4}
    streaming = {"queries": queries, **read, "score block": R * m * 4,
                 "running top-k (merge)": 2 * (R + k) * m * 12}
    self_inf = {**read, "chunk's solve": R * d * 8, "output [n]": n * 4}
    stages = [
        Stage("featurise", sum(featurise.values()), n_ckpt * n * d * s, featurise),
        Stage("preconditioner", precond, 0, {"curvature matrices": precond}),
        Stage("top-k (faiss)", sum(top.values()), 0, top),
        Stage("top-k (stream)", sum(streaming.values()), 0, streaming),
        Stage("self-influence", sum(self_inf.values()), 0, self_inf),
    ]
    return Plan(stages)
