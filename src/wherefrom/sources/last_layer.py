"""Gradients of one module's parameters only (by default the last ``nn.Linear``): a cheap, common restriction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from wherefrom.gradients import Probe
from wherefrom.layers.tracking import last_linear_layer
from wherefrom.sources.base import GradientSource, SampleBatch
from wherefrom.sources.full import FullGradients
from wherefrom.task import LossFn, Task


class LastLayerGradients(GradientSource):
    """``base`` features of the task restricted to the parameters of ``module`` (default: the last Linear layer).

    Equivalent to ``Task(model, params=[module])``; curvature preconditioners then work on that layer alone.
    """

    def __init__(self, module: str | None = None, base: GradientSource | None = None) -> None:
        self.module = module
        self.base = base if base is not None else FullGradients()
        self.task = None  # type: ignore[assignment]

    @property
    def parameter_space(self) -> bool:
        return self.base.parameter_space

    def setup(self, task: Task) -> LastLayerGradients:
        name = self.module if self.module is not None else last_linear_layer(task.model)
        self.base.setup(task.restrict([name]))
        self.task, self.dim, self.layout = self.base.task, self.base.dim, self.base.layout
        return self

    def batch_features(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe,
                       c: int = 0) -> torch.Tensor:
        return self.base.batch_features(state, batch, fn, c)

    def batch_sample(self, state: Mapping[str, torch.Tensor], batch: Any, probe: LossFn | Probe,
                     c: int = 0) -> SampleBatch:
        return self.base.batch_sample(state, batch, probe, c)

    def matrix(self, c: int = 0, dtype: torch.dtype = torch.float64,
               device: torch.device | str = "cpu") -> torch.Tensor | None:
        return self.base.matrix(c, dtype, device)
