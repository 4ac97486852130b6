"""Which registered layers own a task's parameters, one forward/backward capture of all of them, and the fallback.

:class:`LayerSet` binds the task's selected parameters to layer types (:mod:`wherefrom.layers.base`): each module
whose class has a registered type and whose configuration it supports becomes a tracked layer; every selected
parameter left over (a free ``nn.Parameter``, a bias whose weight is not selected, an unsupported configuration,
a module class nobody registered) is a *fallback* parameter, whose per-example gradients come from
``torch.func.vmap`` and whose curvature is diagonal.

:meth:`LayerSet.capture` runs the model once on a batch and returns, per tracked layer, the per-example data of its
type (``a``/``δ`` for Kronecker layers, gradients for dense ones). It differentiates the **sum** of per-example
values, so ``δ`` is the exact per-example output gradient (no ``1/B`` rescaling is needed, whatever reduction the
training loop used). Each tracked layer must be called exactly once per forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import wherefrom.layers.builtin  # noqa: F401  (registers the built-in layer types)
from wherefrom.errors import WherefromError
from wherefrom.gradients import Probe, per_example_grad_fn
from wherefrom.layers.base import DenseIO, KroneckerLayer, LayerCaptureError, LayerIO, LayerType, layer_type_for
from wherefrom.task import LossFn, Task


class LayerSet:
    """The tracked layers of a task and its fallback parameters.

    Attributes:
        layers: ``{module name: LayerType}`` in model order.
        fallback: selected parameters no tracked layer owns, in model order.
        unsupported: ``{module name: reason}`` for registered modules whose configuration is not supported.
    """

    def __init__(self, task: Task) -> None:
        self.task = task
        selected = set(task.param_names)
        self.layers: dict[str, LayerType] = {}
        self.unsupported: dict[str, str] = {}
        owned: set[str] = set()
        for name, module in task.model.named_modules():
            cls = layer_type_for(module)
            if cls is None:
                continue
            params = cls.owns(name, module, selected)
            if not params:
                continue
            reason = cls.unsupported(module)
            if reason is not None:
                self.unsupported[name] = f"{type(module).__name__}: {reason}"
                continue
            self.layers[name] = cls(name, module, params)
            owned.update(params)
        self.fallback = [n for n in task.param_names if n not in owned]
        self._fallback_task: Task | None = None

    @property
    def kronecker(self) -> dict[str, KroneckerLayer]:
        return {n: layer for n, layer in self.layers.items() if layer.kronecker}  # type: ignore[misc]

    @property
    def complete(self) -> bool:
        """Whether every selected parameter belongs to a tracked layer (no fallback needed)."""
        return bool(self.layers) and not self.fallback

    def describe_fallback(self) -> str:
        """Why the fallback parameters are not tracked, for messages."""
        parts = [f"{self.fallback[:6]}"]
        if self.unsupported:
            parts.append("unsupported configurations: " + "; ".join(f"{k} ({v})" for k, v in self.unsupported.items()))
        return ", ".join(parts)

    @property
    def fallback_task(self) -> Task:
        """The task restricted to the fallback parameters (for their vmap gradients)."""
        if self._fallback_task is None:
            self._fallback_task = self.task.restrict(self.fallback)
        return self._fallback_task

    # ------------------------------------------------------------------ captures
    def capture(self, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | Probe | None = None,
                names: list[str] | None = None) -> dict[str, LayerIO | DenseIO]:
        """Run ``fn`` (default: the training loss) on a prepared ``batch`` and capture every tracked layer.

        Raises :class:`LayerCaptureError` when a layer is called twice (shared weights) or not at all.
        """
        task = self.task
        fn = task.loss_fn if fn is None else fn
        layers = [self.layers[n] for n in (names if names is not None else list(self.layers))]
        inputs: dict[str, torch.Tensor] = {}
        outputs: dict[str, torch.Tensor] = {}
        handles = []
        for layer in layers:
            def hook(mod: nn.Module, inp: tuple, out: torch.Tensor, name: str = layer.name) -> None:
                if name in outputs:
                    raise LayerCaptureError(
                        f"Layer {name!r} is called more than once per forward pass (shared weights); layer-wise "
                        "methods need each layer used once (per-example gradients then fall back to vmap).")
                inputs[name] = inp[0].detach()
                outputs[name] = out
            handles.append(layer.module.register_forward_hook(hook))
        try:
            flat = task.flat_params(state).clone().requires_grad_(True)
            with torch.enable_grad():
                values = task.per_example(fn, flat, state, batch)
                missing = [layer.name for layer in layers if layer.name not in outputs]
                if missing:
                    raise LayerCaptureError(
                        f"Layers {missing[:5]} were not called in the forward pass (their weights are used in "
                        "another way, e.g. nn.MultiheadAttention's out_proj); layer-wise methods cannot capture them.")
                grads = torch.autograd.grad(values.sum(), [outputs[layer.name] for layer in layers],
                                            allow_unused=True)
        finally:
            for h in handles:
                h.remove()
        result = {}
        for layer, g in zip(layers, grads):
            g = torch.zeros_like(outputs[layer.name]) if g is None else g.detach()
            result[layer.name] = layer.capture(inputs[layer.name], g)
        return result

    def fallback_gradients(self, state: Mapping[str, torch.Tensor], batch: Any,
                           fn: LossFn | Probe | None = None) -> torch.Tensor:
        """Per-example gradients ``[B, p_fallback]`` of the fallback parameters (vmap)."""
        sub = self.fallback_task
        fn = self.task.loss_fn if fn is None else fn
        return per_example_grad_fn(sub, fn, state)(sub.flat_params(state), batch).detach()

    def flat(self, captures: Mapping[str, LayerIO | DenseIO], fallback: torch.Tensor | None = None) -> torch.Tensor:
        """Assemble per-example gradients ``[B, p]`` in the task's flat order (zeros where nothing was given)."""
        slices = self.task.param_slices()
        first = next(iter(captures.values())) if captures else None
        if first is not None:
            ref = first.a if isinstance(first, LayerIO) else next(iter(first.grads.values()))
        else:
            ref = fallback
        if ref is None:
            raise WherefromError("Nothing to assemble: no captures and no fallback gradients.")
        out = torch.zeros(ref.shape[0], self.task.num_params, dtype=ref.dtype, device=ref.device)
        for name, io in captures.items():
            blocks = self.layers[name].to_flat(io.gradients()) if isinstance(io, LayerIO) else io.grads
            for pname, block in blocks.items():
                out[:, slices[pname]] = block
        if fallback is not None:
            offset = 0
            for pname in self.fallback:
                s = slices[pname]
                size = s.stop - s.start
                out[:, s] = fallback[:, offset: offset + size]
                offset += size
        return out


def last_linear_layer(model: nn.Module) -> str:
    """Name of the last ``nn.Linear`` module of ``model`` (in ``named_modules`` order)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise WherefromError("The model has no nn.Linear layer; pass last_layer= naming the final linear layer.")
    return names[-1]


# ---------------------------------------------------------------------------------------------- compatibility
def kronecker_layers(task: Task) -> dict[str, nn.Module]:
    """Tracked Kronecker layers (Linear, Conv1d, Conv2d, Embedding, registered ones) by module name."""
    return {name: layer.module for name, layer in LayerSet(task).kronecker.items()}


def uncovered_params(task: Task, layers: Mapping[str, nn.Module]) -> list[str]:
    """Selected parameters that none of ``layers`` (module name → module) owns."""
    selected = set(task.param_names)
    covered: set[str] = set()
    for name, module in layers.items():
        cls = layer_type_for(module)
        if cls is not None:
            covered.update(cls.owns(name, module, selected))
    return [n for n in task.param_names if n not in covered]


def capture_layers(
    task: Task, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | None = None,
    layers: Mapping[str, nn.Module] | None = None,
) -> dict[str, LayerIO | DenseIO]:
    """Capture the tracked layers (or the named subset ``layers``) of a prepared batch (see :class:`LayerSet`)."""
    ls = LayerSet(task)
    return ls.capture(state, batch, fn, None if layers is None else [n for n in layers if n in ls.layers])


def flat_from_layers(task: Task, ios: Mapping[str, LayerIO | DenseIO]) -> torch.Tensor:
    """Per-example gradients ``[B, p]`` in the task's flat order from captures (zeros where uncovered)."""
    return LayerSet(task).flat(ios)
