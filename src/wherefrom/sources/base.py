"""The gradient-source interface: per-example features ``φ(∇f(z))`` of a batch, their layout, and curvature samples.

A source is configured without a task (``FullGradients("auto")``, ``ProjectedGradients(proj)``, ...) and bound to
one with :meth:`GradientSource.setup`. Bound, it offers

- :meth:`~GradientSource.batch_features` ``(state, batch, fn, c) -> [B, d]``: the features of one prepared batch
  for the per-example function ``fn`` (training loss, target, margin) at checkpoint ``c`` (random projections are
  seeded per checkpoint, so train and test of one checkpoint share them);
- :attr:`~GradientSource.layout`: the feature vector cut into blocks (:class:`FeatureBlock`), one per layer or
  parameter group, a Kronecker block carrying its ``[d_out, d_in]`` layout (:class:`~wherefrom.layers.LayerSpec`);
- :meth:`~GradientSource.batch_sample` ``(state, batch, probe, c) -> SampleBatch``: the same features in factored
  form — ``(a, δ)`` per Kronecker block and rows per dense block — for one curvature *probe* (a loss with sampled
  labels, a Gauss-Newton pseudo-loss): what K-FAC, EK-FAC and diagonal preconditioners are fitted from;
- :meth:`~GradientSource.matrix` ``(c) -> [p, d]``: the linear map from full gradients to features when it can be
  formed (so that Hessian-vector products can be taken in feature space), else ``None``.

:func:`feature_blocks` is the loop that turns a loader into ``(start, [B, d])`` blocks through
:func:`wherefrom.batches.batch_loop`, with the finiteness check naming the offending examples.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom.batches import batch_loop
from wherefrom.configurable import Configurable
from wherefrom.errors import WherefromError
from wherefrom.gradients import Probe, check_finite
from wherefrom.layers.base import LayerSpec
from wherefrom.task import LossFn, Task


@dataclass
class FeatureBlock:
    """A block of the feature vector: ``index`` (positions, ``[size]``), its Kronecker layout ``spec`` (or None for a
    dense block) and whether it holds fallback parameters (no registered layer type)."""

    name: str
    index: torch.Tensor
    spec: LayerSpec | None = None
    fallback: bool = False

    @property
    def size(self) -> int:
        return int(self.index.numel())


def kronecker_block(spec: LayerSpec) -> FeatureBlock:
    return FeatureBlock(spec.name, spec.indices(), spec)


@dataclass
class SampleBatch:
    """Features of one batch in factored form: ``kronecker[block] = (a [B, T, cols], δ [B, T, d_out])`` and
    ``dense[block] = rows [B, size]``; ``positions[block]``: the real (non-padding) positions of a Kronecker block
    (absent: all ``B·T``)."""

    kronecker: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)
    positions: dict[str, int] = field(default_factory=dict)

    def rows(self, layout: list[FeatureBlock], dim: int) -> torch.Tensor:
        """The flat feature rows ``[B, dim]`` (Kronecker blocks expanded to ``Σ_t δ_t ãᵀ_t``)."""
        ref = next(iter(self.dense.values())) if self.dense else next(iter(self.kronecker.values()))[1]
        out = torch.zeros(ref.shape[0], dim, dtype=ref.dtype, device=ref.device)
        for block in layout:
            if block.spec is not None:
                a, d = self.kronecker[block.name]
                block.spec.write(out, torch.einsum("bto,bti->boi", d, a))
            else:
                out[:, block.index.to(out.device)] = self.dense[block.name]
        return out


class GradientSource(Configurable):
    """Base class of gradient sources (see the module docstring). Subclasses implement :meth:`setup`,
    :meth:`batch_features` and :meth:`batch_sample`, and set ``dim`` and ``layout`` in ``setup``."""

    task: Task
    dim: int
    layout: list[FeatureBlock]

    @property
    def parameter_space(self) -> bool:
        """Whether the features are the plain per-example gradients in the flat parameter order (so that
        curvature preconditioners can work on the training objective directly)."""
        return False

    def setup(self, task: Task) -> GradientSource:  # pragma: no cover - interface
        """Bind the source to ``task`` (validating it); returns ``self``."""
        raise NotImplementedError

    def require_setup(self) -> Task:
        if getattr(self, "task", None) is None:
            raise WherefromError(f"{type(self).__name__} is not bound to a task: call setup(task).")
        return self.task

    def batch_features(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe,
                       c: int = 0) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def batch_sample(self, state: Mapping[str, torch.Tensor], batch: Any, probe: LossFn | Probe,
                     c: int = 0) -> SampleBatch:  # pragma: no cover - interface
        raise NotImplementedError

    def dot_rows(self, F: torch.Tensor) -> torch.Tensor:
        """Rows whose plain dot products are the inner products of the feature rows ``F`` ``[B, dim]`` (the rows
        themselves here; a source that stores factors expands them), for inner-product search."""
        return F

    def matrix(self, c: int = 0, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> torch.Tensor | None:
        """The ``[p, d]`` map from full gradients to features, or ``None`` when it cannot be formed."""
        return None


def feature_blocks(
    source: GradientSource, loader: DataLoader, state: Mapping[str, torch.Tensor], c: int = 0,
    fn: LossFn | Probe | None = None, what: str = "training-loss", progress: bool | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(start, features [B, d])`` for every batch of ``loader`` (``fn`` default: the training loss)."""
    task = source.require_setup()
    fn = task.loss_fn if fn is None else fn
    for start, batch in batch_loop(task, loader, state, fn, what, progress):
        block = source.batch_features(state, batch, fn, c)
        check_finite(block, start, what)
        yield start, block


def layout_indices(layout: list[FeatureBlock]) -> dict[str, torch.Tensor]:
    """``{block name: positions}``."""
    return {b.name: b.index for b in layout}
