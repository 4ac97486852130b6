"""Randomly projected gradients ``Pᵀ g`` (``[B, k]``) on top of another source (full gradients by default).

Checkpoint ``c`` uses the projection's matrix ``P_c`` for train and test alike (see
:mod:`wherefrom.projection.random`); the feature vector is one dense block.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from wherefrom.errors import WherefromError
from wherefrom.gradients import Probe
from wherefrom.projection import Projection, make_projection
from wherefrom.sources.base import FeatureBlock, GradientSource, SampleBatch
from wherefrom.sources.full import FullGradients
from wherefrom.task import LossFn, Task

#: the largest ``p·k`` for which :meth:`ProjectedGradients.matrix` forms ``P`` explicitly.
MAX_MATRIX_ENTRIES = 50_000_000


class ProjectedGradients(GradientSource):
    """``projection.project(base features, c)``.

    Args:
        projection: a :class:`~wherefrom.projection.Projection` (or any object with ``project(block, c)``), or a
            kind name (``"gaussian"``, ``"rademacher"``, ``"sparse"``) with ``dim`` and ``seed``.
        base: the source that is projected (default :class:`FullGradients` ``("auto")``).
        dim: the projection dimension, for a projection given by kind name.
        seed: the projection seed, for a projection given by kind name.
    """

    def __init__(self, projection: Projection | str, base: GradientSource | None = None, *, dim: int | None = None,
                 seed: int = 0) -> None:
        self.projection = make_projection(projection, dim, seed)
        if self.projection is None:
            raise WherefromError("ProjectedGradients needs a projection.")
        self.base = base if base is not None else FullGradients()
        self.task = None  # type: ignore[assignment]

    def setup(self, task: Task) -> ProjectedGradients:
        self.base.setup(task)
        self.task = self.base.task
        dim = getattr(self.projection, "dim", -1)
        self.dim = dim if isinstance(dim, int) and dim > 0 else self.base.dim
        self.layout = [FeatureBlock("projection", torch.arange(self.dim))]
        return self

    @property
    def use_layers(self) -> bool:
        return bool(getattr(self.base, "use_layers", False))

    def batch_features(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe,
                       c: int = 0) -> torch.Tensor:
        return self.projection.project(self.base.batch_features(state, batch, fn, c), c)

    def batch_sample(self, state: Mapping[str, torch.Tensor], batch: Any, probe: LossFn | Probe,
                     c: int = 0) -> SampleBatch:
        rows = self.base.batch_sample(state, batch, probe, c).rows(self.base.layout, self.base.dim)
        return SampleBatch(dense={"projection": self.projection.project(rows, c)})

    def matrix(self, c: int = 0, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> torch.Tensor | None:
        if not self.base.parameter_space or self.base.dim * self.dim > MAX_MATRIX_ENTRIES:
            return None
        p, rows = self.base.dim, 1024
        parts = []
        for start in range(0, p, rows):  # P = project(I), a band of unit rows at a time
            eye = torch.zeros(min(rows, p - start), p, dtype=dtype, device=device)
            eye[torch.arange(eye.shape[0]), torch.arange(start, start + eye.shape[0])] = 1.0
            parts.append(self.projection.project(eye, c))
        return torch.cat(parts)
