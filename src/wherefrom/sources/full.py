"""Full per-example gradients ``[B, p]`` in the flat parameter order, from layer captures or from vmap.

``mode``:

- ``"auto"`` (default): from one forward and backward pass with layer captures (``G = Σ_t δ_t ãᵀ_t`` per
  Kronecker layer, direct per-example gradients for dense layers such as LayerNorm) when every selected parameter
  belongs to a registered layer type and no module is deliberately kept in training mode; otherwise, and whenever a
  layer cannot be captured (shared weights, a weight used outside its module's forward), ``torch.func.vmap``;
- ``"layers"``: always captures (an error when a selected parameter has no layer type);
- ``"vmap"``: always vmap.

Both give the same gradients (to rounding); captures are many times faster on CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from wherefrom.errors import WherefromError
from wherefrom.gradients import Probe, vmap_gradients
from wherefrom.layers.base import LayerCaptureError, LayerIO
from wherefrom.layers.tracking import LayerSet
from wherefrom.sources.base import FeatureBlock, GradientSource, SampleBatch, kronecker_block
from wherefrom.task import LossFn, Task

log = logging.getLogger(__name__)

MODES = ("auto", "vmap", "layers")


def parameter_layout(task: Task, layers: LayerSet) -> list[FeatureBlock]:
    """The flat parameter vector cut into one block per tracked layer and one per fallback parameter."""
    slices = task.param_slices()
    blocks = []
    for name, layer in layers.layers.items():
        if layer.kronecker:
            blocks.append(kronecker_block(layer.spec(slices)))
        else:
            idx = torch.cat([torch.arange(slices[p].start, slices[p].stop) for p in layer.owned])
            blocks.append(FeatureBlock(name, idx))
    for pname in layers.fallback:
        blocks.append(FeatureBlock(pname, torch.arange(slices[pname].start, slices[pname].stop), fallback=True))
    return sorted(blocks, key=lambda b: int(b.index.min()))


class FullGradients(GradientSource):
    """Per-example gradients of every selected parameter (see the module docstring for ``mode``)."""

    def __init__(self, mode: str = "auto") -> None:
        if mode not in MODES:
            raise WherefromError(f"gradients must be 'auto', 'vmap' or 'layers', got {mode!r}.")
        self.mode = mode
        self.task: Task | None = None  # type: ignore[assignment]
        self.use_layers = False

    @property
    def parameter_space(self) -> bool:
        return True

    def setup(self, task: Task) -> FullGradients:
        self.task = task
        self.layers = LayerSet(task)
        self.dim = task.num_params
        self.layout = parameter_layout(task, self.layers)
        if self.mode == "layers" and not self.layers.complete:
            raise WherefromError(
                "gradients='layers' needs every selected parameter to belong to a registered layer type "
                f"(wherefrom.layers); not covered: {self.layers.describe_fallback()}. Use gradients='vmap' or "
                "'auto', or register a layer type.")
        self.use_layers = self.mode != "vmap" and self.layers.complete and not task.train_mode_modules
        return self

    def batch_features(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe,
                       c: int = 0) -> torch.Tensor:
        task = self.require_setup()
        if self.use_layers:
            try:
                return self.layers.flat(self.layers.capture(state, batch, fn))
            except LayerCaptureError as exc:
                if self.mode == "layers":
                    raise
                log.info("per-example gradients fall back to vmap: %s", exc)
                self.use_layers = False
        return vmap_gradients(task, fn, state, batch)

    def batch_sample(self, state: Mapping[str, torch.Tensor], batch: Any, probe: LossFn | Probe,
                     c: int = 0) -> SampleBatch:
        """Captures of the tracked layers and vmap rows of the fallback parameters, per layout block."""
        self.require_setup()
        out = SampleBatch()
        captures = self.layers.capture(state, batch, probe) if self.layers.layers else {}
        for name, io in captures.items():
            if isinstance(io, LayerIO):
                out.kronecker[name] = (io.a, io.delta)
                out.positions[name] = io.real_positions
            else:
                out.dense[name] = torch.cat([io.grads[p] for p in self.layers.layers[name].owned], dim=1)
        if self.layers.fallback:
            rows = self.layers.fallback_gradients(state, batch, probe)
            offset = 0
            slices = self.task.param_slices()
            for pname in self.layers.fallback:
                size = slices[pname].stop - slices[pname].start
                out.dense[pname] = rows[:, offset: offset + size]
                offset += size
        return out
