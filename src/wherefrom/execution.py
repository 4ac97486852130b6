"""How an attributor runs (not what it computes): batch sizes, memory budget, cache folder, device, dtype, progress.

Every attributor takes ``execution=Execution(...)``; the older keyword arguments (``batch_size=``, ``memory_gb=``,
``cache_dir=``, ``progress=``) are still accepted and override the corresponding field. None of these options
changes the scores beyond floating-point rounding, except ``dtype`` (a lower storage precision).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from wherefrom.configurable import CLASSES, class_key
from wherefrom.errors import WherefromError

LEGACY_FIELDS = ("batch_size", "memory_gb", "cache_dir", "progress")


@dataclass(frozen=True)
class Execution:
    """Execution options shared by every attributor.

    Attributes:
        batch_size: examples per batch when computing per-example gradients (and per block of test points).
        block_size: rows per block when reading stored training features (scoring, top-k, self-influence);
            ``None`` means ``max(batch_size, 1024)``.
        memory_gb: training features are kept in memory when ``n·d`` values fit this budget (GB); otherwise they
            go to ``cache_dir`` on disk when it is given, and are recomputed on each pass when it is not.
        cache_dir: folder where training features and fitted curvature factors are kept and found again by a
            later run on the same checkpoint and configuration (keys come from the configuration, not a repr).
        device: where stored training features are kept (``None``: the model's device). Scoring runs there.
        dtype: dtype of stored training features (``None``: the dtype they are computed in, the model's).
        progress: show progress bars (``None``: the library default, see :func:`wherefrom.set_progress`).
    """

    batch_size: int = 256
    block_size: int | None = None
    memory_gb: float = 2.0
    cache_dir: str | None = None
    device: str | None = None
    dtype: torch.dtype | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise WherefromError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        if self.block_size is not None and (not isinstance(self.block_size, int) or self.block_size < 1):
            raise WherefromError(f"block_size must be a positive integer or None, got {self.block_size!r}.")
        if self.memory_gb < 0:
            raise WherefromError(f"memory_gb must be >= 0, got {self.memory_gb}.")

    @property
    def rows_per_block(self) -> int:
        """Rows per block when reading stored features."""
        return self.block_size if self.block_size is not None else max(self.batch_size, 1024)

    def replace(self, **changes: Any) -> Execution:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CLASSES[class_key(Execution)] = Execution  # saved configs rebuild it by name


def resolve_execution(execution: Execution | dict | None = None, **legacy: Any) -> Execution:
    """``execution`` (an :class:`Execution`, a dict of its fields or ``None``) with the old keyword arguments
    (``batch_size``, ``memory_gb``, ``cache_dir``, ``progress``) applied on top where they are not ``None``."""
    if execution is None:
        base = Execution()
    elif isinstance(execution, Execution):
        base = execution
    elif isinstance(execution, dict):
        base = Execution(**execution)
    else:
        raise WherefromError(f"execution must be a wherefrom.Execution, got {type(execution).__name__}.")
    unknown = set(legacy) - set(LEGACY_FIELDS)
    if unknown:
        raise WherefromError(f"Unknown execution options {sorted(unknown)}; known: {LEGACY_FIELDS}.")
    changes = {k: v for k, v in legacy.items() if v is not None}
    return base.replace(**changes) if changes else base
