"""A rough prediction of what ``wherefrom attribute`` will hold in memory, for ``--dry-run``.

Only the large terms are counted: the model parameters ``p``, one block of per-example gradients
``[batch_size, p]``, the training features ``[n_train, d]`` when they fit the attributor's ``memory_gb`` budget
(``d = p`` or the projection dimension), the curvature state of influence solvers (explicit ``p²`` twice in float64;
K-FAC/EK-FAC ``Σ_l a_l² + g_l²`` Kronecker factors and their eigenvectors; Arnoldi a Krylov basis of ``iterations``
vectors), and the dense ``[n_train, m]`` scores written as output. Not counted: the Python/torch process itself
(about 0.3 GB), the data set, and the autograd workspace of per-example gradients, which can dominate for
convolutional models (a 5,994-parameter MNIST CNN with 1,000 training examples and EK-FAC peaked at 1.4 GB of
resident memory against about 30 MB of the terms above). Read the total as a lower bound on the arrays kept.
"""

from __future__ import annotations

from typing import Any

from torch import nn


def _kronecker_sizes(task: Any) -> list[tuple[int, int]]:
    """``(a, g)`` input and output dimensions (``a`` with the bias column) of selected Linear / Conv2d layers."""
    selected = set(task.param_names)
    sizes = []
    for name, module in task.model.named_modules():
        prefix = f"{name}." if name else ""
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or f"{prefix}weight" not in selected:
            continue
        a = module.weight[0].numel()
        if module.bias is not None and f"{prefix}bias" in selected:
            a += 1
        sizes.append((a, module.weight.shape[0]))
    return sizes


def _feature_dim(attributor: Any, p: int) -> int:
    projection = getattr(attributor, "projection", None)
    for attr in ("proj_dim",):
        if isinstance(getattr(attributor, attr, None), int):
            return getattr(attributor, attr)
    if projection is not None and isinstance(getattr(projection, "dim", None), int):
        return projection.dim
    return p


def estimate_memory(attributor: Any, task: Any, n_train: int, n_test: int) -> list[tuple[str, int | None]]:
    """``[(what, bytes or None when streamed / not estimated)]`` for the large terms (see the module docstring)."""
    p = task.num_params
    item = task.dtype.itemsize if hasattr(task.dtype, "itemsize") else 4
    rows: list[tuple[str, int | None]] = [(f"model parameters (p = {p:,})", p * item)]
    batch = int(getattr(attributor, "batch_size", 256) or 256)
    rows.append((f"per-example gradient block [{batch}, p]", batch * p * item))
    if hasattr(attributor, "memory_gb"):
        d = _feature_dim(attributor, p)
        n_ckpt = max(1, len(getattr(attributor, "checkpoints", None) or []) or 1)
        nbytes = n_train * d * item * n_ckpt
        if nbytes <= attributor.memory_gb * 1e9:
            rows.append((f"training features [{n_train:,}, {d:,}] × {n_ckpt} checkpoint(s) in memory", nbytes))
        else:
            where = "on disk" if getattr(attributor, "cache_dir", None) else "recomputed per pass"
            rows.append((f"training features [{n_train:,}, {d:,}] ({nbytes / 1e9:.1f} GB: over memory_gb, {where})",
                         None))
    solver = getattr(getattr(attributor, "solver", None), "name", None)
    if solver == "explicit":
        rows.append(("explicit curvature and its inverse (p × p, float64)", 2 * p * p * 8))
    elif solver in ("kfac", "ekfac"):
        sizes = _kronecker_sizes(task)
        nbytes = sum(2 * (a * a + g * g) * 4 + (a * g * 4 if solver == "ekfac" else 0) for a, g in sizes)
        rows.append((f"{solver.upper()} factors of {len(sizes)} layers", nbytes))
    elif solver == "arnoldi":
        iterations = int(getattr(attributor, "solver_options", {}).get("iterations", 100))
        rows.append((f"Arnoldi Krylov basis ({iterations} × p, float64)", iterations * p * 8))
    elif solver in ("cg", "lissa"):
        rows.append((f"{solver.upper()} work vectors (a few × p per test block)", 8 * p * item))
    elif solver is not None:
        rows.append((f"{solver} solver state", None))
    rows.append((f"scores [{n_train:,}, {n_test}] (output)", n_train * n_test * 4))
    return rows


def format_bytes(n: float) -> str:
    """``1536`` → ``'1.5 KB'`` (powers of 1000)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover
