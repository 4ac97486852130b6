"""Per-example gradients kept as layer factors where that is cheaper: TracInCP's and Grad-Dot's inner products.

For a Kronecker layer (:mod:`wherefrom.layers`) the per-example gradient is ``G_i = Σ_t δ_it ã_itᵀ``
(``[d_out, cols]``, ``cols = d_in (+1 with a bias)``, ``T`` positions), so the inner product of two of them needs
only the factors:

    ⟨G_i, G'_j⟩ = Σ_{t,s} (ã_itᵀ ã'_js)(δ_itᵀ δ'_js)          (T = 1: (ã_iᵀ ã'_j)(δ_iᵀ δ'_j))

**Cost rule.** Per (training, test) pair the explicit dot product costs ``cols·d_out`` multiply-adds and stores
``cols·d_out`` numbers per example; the factored one costs ``T²·(cols + d_out + 1)`` and stores
``T·(cols + d_out)``. A layer is kept factored when ``T²·(cols + d_out + 1) < cols·d_out``, with ``T`` the number of
positions in the first training batch (a Linear layer on flat inputs: ``T = 1``, e.g. ``65 + 10`` against
``65·10`` for a 64→10 layer with bias; a convolution over many positions stays explicit). Every other block (dense
layers such as LayerNorm, parameters without a layer type) is its explicit per-example gradient rows.

The feature row of an example is ``[explicit rows | ã_1 (T·cols), δ_1 (T·d_out) | ã_2, δ_2 | …]``; examples with fewer
positions than planned are padded with zeros (they add nothing), more positions are an error. These rows are not
gradients: their inner product is :meth:`FactoredGradients.inner`, not the plain dot product, so only methods that
ask for it (TracInCP) use this source. Without a plan (before :meth:`FactoredGradients.plan`, or when the layers
cannot be captured) the rows are the full per-example gradients of :class:`~wherefrom.sources.FullGradients`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch

from wherefrom.errors import WherefromError
from wherefrom.gradients import Probe
from wherefrom.layers.base import DenseIO, LayerCaptureError, LayerIO
from wherefrom.layers.embedding import IndexedIO
from wherefrom.sources.base import FeatureBlock, GradientSource, SampleBatch
from wherefrom.sources.full import FullGradients
from wherefrom.task import LossFn, Task

log = logging.getLogger(__name__)


@dataclass
class FactoredLayer:
    """A layer kept as factors: ``T`` positions, ``cols`` inputs (with the bias 1), ``d_out`` outputs, and where its
    ``[ã (T·cols), δ (T·d_out)]`` start in the feature row."""

    name: str
    positions: int
    cols: int
    d_out: int
    offset: int

    @property
    def width(self) -> int:
        return self.positions * (self.cols + self.d_out)


def factored_is_cheaper(positions: int, cols: int, d_out: int) -> bool:
    """The cost rule of the module docstring: ``T²·(cols + d_out + 1) < cols·d_out``."""
    return positions * positions * (cols + d_out + 1) < cols * d_out


class FactoredGradients(GradientSource):
    """Per-example gradients with the layers that are cheaper as factors kept as factors (see the module docstring).

    Args:
        mode: how the explicit blocks are computed, as :class:`~wherefrom.sources.FullGradients` (``"auto"``,
            ``"layers"``, ``"vmap"``); with ``"vmap"`` nothing is factored.
    """

    def __init__(self, mode: str = "auto") -> None:
        self.mode = mode
        self.full = FullGradients(mode)
        self.task = None  # type: ignore[assignment]
        self.factored_: list[FactoredLayer] = []
        self.explicit_: list[str] = []  # tracked layers kept explicit, in layout order
        self.planned_ = False

    @property
    def parameter_space(self) -> bool:
        return not self.factored_

    def setup(self, task: Task) -> FactoredGradients:
        self.task = task
        self.full.setup(task)
        self._unplanned()
        return self

    def _unplanned(self) -> None:
        self.factored_, self.explicit_, self.planned_ = [], [], False
        self.dim, self.layout = self.full.dim, self.full.layout

    # ------------------------------------------------------------------ the plan
    def plan(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe) -> None:
        """Decide which layers are kept as factors from one capture of a prepared training ``batch``."""
        self.require_setup()
        self._unplanned()
        task = self.task
        if self.mode == "vmap" or task.train_mode_modules or not self.full.layers.layers:
            return
        try:
            captures = self.full.layers.capture(state, batch, fn)
        except LayerCaptureError as exc:
            log.info("TracIn gradients stay explicit: %s", exc)
            return
        # (T, cols, d_out) from δ and the input width: an embedding captured as ids builds no one-hot inputs here
        shapes = {name: (io.delta.shape[1], io.num_classes if isinstance(io, IndexedIO) else io.a.shape[2],
                         io.delta.shape[2]) for name, io in captures.items() if isinstance(io, LayerIO)}
        self.set_plan([name for name, shape in shapes.items() if factored_is_cheaper(*shape)], shapes)

    def set_plan(self, names: list[str], shapes: Mapping[str, tuple[int, int, int]]) -> None:
        """Keep the layers ``names`` as factors (``shapes[name] = (T, cols, d_out)``); the rest explicit."""
        self._unplanned()
        self.planned_ = True
        if not names:
            return
        slices = self.task.param_slices()
        explicit_params = [p for p in self.task.param_names
                           if not any(p in self.full.layers.layers[n].owned for n in names)]
        width = sum(slices[p].stop - slices[p].start for p in explicit_params)
        self.explicit_ = [n for n in self.full.layers.layers if n not in names]
        offset = width
        for name in self.full.layers.layers:
            if name in names:
                T, cols, d_out = shapes[name]
                self.factored_.append(FactoredLayer(name, int(T), int(cols), int(d_out), offset))
                offset += self.factored_[-1].width
        self._explicit_params = explicit_params
        self.dim = offset
        self.layout = [FeatureBlock("explicit", torch.arange(width))] + [
            FeatureBlock(f.name, torch.arange(f.offset, f.offset + f.width)) for f in self.factored_]

    def plan_state(self) -> dict[str, Any]:
        """The plan, for saving (``set_plan`` restores it)."""
        return {"planned": self.planned_, "factored": [asdict(f) for f in self.factored_]}

    def load_plan(self, state: Mapping[str, Any]) -> None:
        self._unplanned()
        if state.get("planned"):
            layers = [FactoredLayer(**f) for f in state["factored"]]
            self.set_plan([f.name for f in layers], {f.name: (f.positions, f.cols, f.d_out) for f in layers})

    # ------------------------------------------------------------------ features
    def batch_features(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe,
                       c: int = 0) -> torch.Tensor:
        if not self.factored_:
            return self.full.batch_features(state, batch, fn, c)
        layers = self.full.layers
        captures = layers.capture(state, batch, fn)
        ref = captures[self.factored_[0].name].delta  # type: ignore[union-attr]
        B = ref.shape[0]
        out = torch.zeros(B, self.dim, dtype=ref.dtype, device=ref.device)
        parts: dict[str, torch.Tensor] = {}
        for name in self.explicit_:
            io = captures[name]
            parts.update(layers.layers[name].to_flat(io.gradients()) if isinstance(io, LayerIO)  # type: ignore
                         else io.grads if isinstance(io, DenseIO) else {})
        if layers.fallback:
            rows = layers.fallback_gradients(state, batch, fn)
            slices, offset = self.task.param_slices(), 0
            for pname in layers.fallback:
                size = slices[pname].stop - slices[pname].start
                parts[pname] = rows[:, offset: offset + size]
                offset += size
        col = 0
        for pname in self._explicit_params:
            block = parts[pname]
            out[:, col: col + block.shape[1]] = block
            col += block.shape[1]
        for f in self.factored_:
            io = captures[f.name]
            assert isinstance(io, LayerIO)
            n_pos = io.delta.shape[1]
            if n_pos > f.positions:
                raise WherefromError(
                    f"Layer {f.name!r} has {n_pos} positions in this batch but {f.positions} in the first training "
                    "batch, which set the layout of its factored gradients. Pad every batch to the same length, or "
                    "pass gradients='full' to TracInCP.")
            a = out[:, f.offset: f.offset + f.positions * f.cols].view(B, f.positions, f.cols)
            d = out[:, f.offset + f.positions * f.cols: f.offset + f.width].view(B, f.positions, f.d_out)
            a[:, :n_pos] = io.a
            d[:, :n_pos] = io.delta
        return out

    def batch_sample(self, state: Mapping[str, torch.Tensor], batch: Any, probe: LossFn | Probe,
                     c: int = 0) -> SampleBatch:
        raise WherefromError("FactoredGradients has no curvature samples: its rows are layer factors for inner "
                             "products (TracInCP); use FullGradients with a curvature preconditioner.")

    # ------------------------------------------------------------------ inner products
    def _factors(self, F: torch.Tensor, f: FactoredLayer) -> tuple[torch.Tensor, torch.Tensor]:
        B = F.shape[0]
        a = F[:, f.offset: f.offset + f.positions * f.cols].reshape(B, f.positions, f.cols)
        d = F[:, f.offset + f.positions * f.cols: f.offset + f.width].reshape(B, f.positions, f.d_out)
        return a, d

    def inner(self, F: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """``⟨g_i, q_j⟩`` for feature rows ``F`` ``[B, dim]`` and ``Q`` ``[m, dim]`` → ``[B, m]``."""
        if not self.factored_:
            return F @ Q.T
        width = self.factored_[0].offset
        out = F[:, :width] @ Q[:, :width].T
        for f in self.factored_:
            a, d = self._factors(F, f)
            qa, qd = self._factors(Q, f)
            if f.positions == 1:
                out += (a[:, 0] @ qa[:, 0].T) * (d[:, 0] @ qd[:, 0].T)
            else:
                B, T, m = a.shape[0], f.positions, qa.shape[0]
                aa = (a.reshape(B * T, -1) @ qa.reshape(m * T, -1).T).reshape(B, T, m, T)
                dd = (d.reshape(B * T, -1) @ qd.reshape(m * T, -1).T).reshape(B, T, m, T)
                out += (aa * dd).sum(dim=(1, 3))
        return out

    def dot_rows(self, F: torch.Tensor) -> torch.Tensor:
        """Explicit rows ``[B, p']`` (the explicit block, then ``vec(Σ_t δ_t ã_tᵀ)`` per factored layer) whose plain
        dot products equal :meth:`inner` (for inner-product search)."""
        if not self.factored_:
            return F
        parts = [F[:, : self.factored_[0].offset]]
        for f in self.factored_:
            a, d = self._factors(F, f)
            parts.append(torch.einsum("bto,bti->boi", d, a).reshape(F.shape[0], -1))
        return torch.cat(parts, dim=1)

    def self_inner(self, F: torch.Tensor) -> torch.Tensor:
        """``‖g_i‖²`` for feature rows ``F`` ``[B, dim]`` → ``[B]``."""
        if not self.factored_:
            return F.pow(2).sum(1)
        width = self.factored_[0].offset
        out = F[:, :width].pow(2).sum(1)
        for f in self.factored_:
            a, d = self._factors(F, f)
            out += ((a @ a.transpose(1, 2)) * (d @ d.transpose(1, 2))).sum(dim=(1, 2))
        return out
