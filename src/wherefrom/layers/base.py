"""The layer-type registry: everything about one kind of layer lives in one registered class.

A *layer type* knows, for one ``nn.Module`` class,

- which of the module's parameters it owns (``weight`` and, when selected, ``bias``) and how they lie in the flat
  parameter vector (:class:`LayerSpec`);
- how to turn what a forward hook sees (the input ``x``) and what the backward pass gives (the output gradient
  ``g = ∂f/∂y``) into per-example quantities.

Two kinds exist:

- :class:`KroneckerLayer` — the per-example gradient is a sum of outer products ``G = Σ_t δ_t ãᵀ_t``
  (``[d_out, d_in(+1)]``) over positions ``t``, with ``ã_t = [a_t; 1]`` (the 1 only when the bias is owned, so the
  bias gradient is the *last column*) and ``δ_t`` the output gradient at ``t``. Its subclasses only say how to read
  ``a`` ``[B, T, d_in]`` from ``x`` and ``δ`` ``[B, T, d_out]`` from ``g``; per-example gradients, K-FAC/EK-FAC
  factors (``A = E[ããᵀ]``, ``S = E[δδᵀ]``) and LoGra's projected features (``(P_out δ)(P_in ã)ᵀ``) all follow.
- :class:`DenseLayer` — no Kronecker structure (e.g. LayerNorm): it returns per-example gradients of its
  parameters directly; curvature methods treat it as a dense block (diagonal for K-FAC/EK-FAC).

Parameters that no registered layer type owns fall back to ``torch.func.vmap`` per-example gradients and a diagonal
curvature (see :mod:`wherefrom.layers.tracking`).

Registering a layer type takes a few lines, e.g. GPT-2's ``Conv1D`` (``y = x W + b``, weight stored
``[d_in, d_out]``; built in, see :mod:`wherefrom.layers.builtin`)::

    @wf.register_layer_type("transformers.pytorch_utils:Conv1D")   # or the class itself
    class GPT2Conv1DLayer(wf.layers.LinearLayer):
        transposed = True
        def dims(self):
            d_in, d_out = self.module.weight.shape
            return d_in, d_out
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from wherefrom.errors import WherefromError


class LayerCaptureError(WherefromError):
    """A layer could not be captured (called more than once per forward pass, or not called at all)."""


def param_name(module_name: str, leaf: str) -> str:
    """Full parameter name of ``leaf`` (``"weight"``/``"bias"``) of a module (``""`` is the root module)."""
    return f"{module_name}.{leaf}" if module_name else leaf


# ---------------------------------------------------------------------------------------------- layouts
@dataclass
class LayerSpec:
    """Where a layer's ``[d_out, d_in(+1)]`` gradient matrix lives in a flat vector.

    ``weight`` and ``bias`` are ``(start, stop)`` ranges; the weight is stored row-major ``[d_out, d_in]``, or
    ``[d_in, d_out]`` when ``transposed`` (nn.Embedding, GPT-2 Conv1D). The bias (if any) is the last column.
    """

    name: str
    weight: tuple[int, int]
    bias: tuple[int, int] | None
    d_out: int
    d_in: int
    transposed: bool = False

    @property
    def cols(self) -> int:
        return self.d_in + (1 if self.bias is not None else 0)

    @property
    def size(self) -> int:
        return self.d_out * self.cols

    def indices(self) -> torch.Tensor:
        """Flat positions of the weight and bias entries, ``[size]``."""
        parts = [torch.arange(*self.weight)]
        if self.bias is not None:
            parts.append(torch.arange(*self.bias))
        return torch.cat(parts)

    def to_matrix(self, V: torch.Tensor) -> torch.Tensor:
        """Rows of ``V`` ``[m, p]`` → layer matrices ``[m, d_out, d_in(+1)]``."""
        m = V.shape[0]
        W = V[:, self.weight[0]: self.weight[1]]
        if self.transposed:
            W = W.reshape(m, self.d_in, self.d_out).transpose(1, 2)
        else:
            W = W.reshape(m, self.d_out, self.d_in)
        if self.bias is None:
            return W
        return torch.cat([W, V[:, self.bias[0]: self.bias[1]].unsqueeze(2)], dim=2)

    def write(self, out: torch.Tensor, M: torch.Tensor) -> None:
        """Write layer matrices ``M`` ``[m, d_out, d_in(+1)]`` into the flat rows of ``out`` ``[m, p]``."""
        m = M.shape[0]
        W = M[:, :, : self.d_in]
        if self.transposed:
            W = W.transpose(1, 2)
        out[:, self.weight[0]: self.weight[1]] = W.reshape(m, -1)
        if self.bias is not None:
            out[:, self.bias[0]: self.bias[1]] = M[:, :, -1]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": list(self.weight), "bias": list(self.bias) if self.bias else None,
                "d_out": self.d_out, "d_in": self.d_in, "transposed": self.transposed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerSpec:
        return cls(d["name"], tuple(d["weight"]), tuple(d["bias"]) if d["bias"] else None, int(d["d_out"]),
                   int(d["d_in"]), bool(d["transposed"]))


# ---------------------------------------------------------------------------------------------- captures
@dataclass
class LayerIO:
    """Per-example inputs ``a`` ``[B, T, d_in(+1)]`` and output gradients ``delta`` ``[B, T, d_out]`` of a layer."""

    name: str
    a: torch.Tensor
    delta: torch.Tensor
    has_bias: bool
    #: the parameter is stored ``[d_in, d_out]`` (nn.Embedding) rather than ``[d_out, d_in]``.
    transposed: bool = False
    #: positions that are not padding (``None``: all ``B·T``); K-FAC averages its input covariance over them.
    positions: int | None = None

    @property
    def real_positions(self) -> int:
        """How many of the ``B·T`` positions are real (not padding dropped by :meth:`without_positions`)."""
        return self.delta.shape[0] * self.delta.shape[1] if self.positions is None else self.positions

    def gradients(self) -> torch.Tensor:
        """Per-example gradient matrices ``G_b = Σ_t δ_{b,t} ã_{b,t}ᵀ``, ``[B, d_out, d_in(+1)]``."""
        if self.a.shape[1] == 1:  # one position: a broadcast outer product is cheaper than einsum
            return self.delta[:, 0, :, None] * self.a[:, 0, None, :]
        return torch.einsum("bto,bti->boi", self.delta, self.a)

    def project_inputs(self, P: torch.Tensor | None) -> torch.Tensor:
        """``P ã_t`` for every position, ``[B, T, k]`` (``P`` ``[k, d_in(+1)]``; ``None`` is the identity)."""
        return self.a if P is None else self.a @ P.T.to(device=self.a.device, dtype=self.a.dtype)

    def without_positions(self, drop: torch.Tensor) -> LayerIO:
        """The same capture with ``ã_t = 0`` where ``drop`` ``[B, T]`` is True (positions that add nothing)."""
        return replace(self, a=self.a.masked_fill(drop.unsqueeze(-1), 0),
                       positions=self.real_positions - int(drop.sum()))


@dataclass
class DenseIO:
    """Per-example gradients of a dense (non-Kronecker) layer's parameters, ``{param name: [B, numel]}``."""

    name: str
    grads: dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------- layer types
class LayerType:
    """Base class of every layer type. An instance is one module of a model, bound to the parameters it owns.

    Subclasses are registered with :func:`register_layer_type`. Class attributes:

    - ``kronecker``: whether per-example gradients are Kronecker sums (:class:`KroneckerLayer`) or not;
    - ``module_types`` / ``module_names``: the module classes it handles, by class or by ``"module:QualName"``
      (set by :func:`register_layer_type`).
    """

    kronecker: ClassVar[bool] = True
    module_types: ClassVar[tuple[type, ...]] = ()
    module_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, module: nn.Module, owned: Sequence[str]) -> None:
        self.name = name
        self.module = module
        self.owned = list(owned)  # full parameter names, in model order

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        """Why this module's configuration is not supported (its parameters then fall back to vmap), or None."""
        return None

    @classmethod
    def owns(cls, name: str, module: nn.Module, selected: set[str]) -> list[str]:
        """The selected parameters of ``module`` this layer type owns (empty: the module is not tracked)."""
        return [param_name(name, leaf) for leaf, p in module.named_parameters(recurse=False)
                if param_name(name, leaf) in selected]

    def capture(self, x: torch.Tensor, g: torch.Tensor) -> LayerIO | DenseIO:  # pragma: no cover - interface
        """Per-example data from the layer's input ``x`` and output gradient ``g`` (both batched)."""
        raise NotImplementedError


class KroneckerLayer(LayerType):
    """A layer whose per-example gradient is ``Σ_t δ_t ãᵀ_t``. Subclasses implement :meth:`dims`,
    :meth:`inputs` and :meth:`output_grads`; set ``transposed = True`` when the weight is stored ``[d_in, d_out]``."""

    kronecker = True
    transposed: ClassVar[bool] = False

    @classmethod
    def owns(cls, name: str, module: nn.Module, selected: set[str]) -> list[str]:
        """The weight (required) and the bias when it exists and is selected."""
        weight = param_name(name, "weight")
        if weight not in selected:
            return []
        bias = param_name(name, "bias")
        has_bias = getattr(module, "bias", None) is not None and bias in selected
        return [weight, bias] if has_bias else [weight]

    @property
    def has_bias(self) -> bool:
        return len(self.owned) == 2

    def dims(self) -> tuple[int, int]:
        """``(d_in, d_out)`` of the gradient matrix (without the bias column)."""
        return self.module.weight[0].numel(), self.module.weight.shape[0]

    def inputs(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """``a`` ``[B, T, d_in]`` from the layer input."""
        raise NotImplementedError

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """``δ`` ``[B, T, d_out]`` from the gradient of the layer output."""
        raise NotImplementedError

    def spec(self, slices: dict[str, slice]) -> LayerSpec:
        """The flat layout of this layer's gradient matrix, given the task's parameter slices."""
        w = slices[self.owned[0]]
        b = slices[self.owned[1]] if self.has_bias else None
        d_in, d_out = self.dims()
        return LayerSpec(self.name, (w.start, w.stop), (b.start, b.stop) if b is not None else None, d_out, d_in,
                         self.transposed)

    def capture(self, x: torch.Tensor, g: torch.Tensor) -> LayerIO:
        delta = self.output_grads(g)
        a = self.inputs(x).to(delta.dtype)
        if self.has_bias:
            a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device)], dim=2)
        return LayerIO(self.name, a, delta, self.has_bias, self.transposed)

    def to_flat(self, G: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split per-example gradient matrices ``[B, d_out, d_in(+1)]`` into ``{param name: [B, numel]}``."""
        W = G[..., :-1] if self.has_bias else G
        if self.transposed:
            W = W.transpose(-1, -2)
        out = {self.owned[0]: W.reshape(G.shape[0], -1)}
        if self.has_bias:
            out[self.owned[1]] = G[..., -1]
        return out


class DenseLayer(LayerType):
    """A layer without Kronecker structure: :meth:`gradients` gives its parameters' per-example gradients."""

    kronecker = False

    def gradients(self, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        """``{leaf: [B, *shape]}`` per-example gradients of the owned parameters."""
        raise NotImplementedError

    def capture(self, x: torch.Tensor, g: torch.Tensor) -> DenseIO:
        grads = self.gradients(x, g)
        out = {}
        for full in self.owned:
            leaf = full.rsplit(".", 1)[-1]
            out[full] = grads[leaf].reshape(g.shape[0], -1)
        return DenseIO(self.name, out)


# ---------------------------------------------------------------------------------------------- registry
LAYER_TYPES: list[type[LayerType]] = []


def _key(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_layer_type(*module_types: type | str):
    """Class decorator: make ``cls`` the layer type of ``module_types`` (and their subclasses).

    A module class may be named by ``"module:QualName"`` instead (e.g. ``"transformers.pytorch_utils:Conv1D"``), so
    that a layer type can be registered without importing the library that defines the module. Later
    registrations take precedence, so a project can replace a built-in rule. Every method that works with layers
    (K-FAC, EK-FAC, LoGra, per-example gradients from captures) then handles those modules.
    """
    if not module_types or not all(isinstance(t, (type, str)) for t in module_types):
        raise WherefromError("register_layer_type needs one or more module classes (or 'module:QualName' names), "
                             "e.g. @register_layer_type(nn.Linear).")

    def deco(cls: type[LayerType]) -> type[LayerType]:
        if not (isinstance(cls, type) and issubclass(cls, LayerType)):
            raise WherefromError("register_layer_type decorates a subclass of wherefrom.layers.LayerType.")
        cls.module_types = tuple(t for t in module_types if isinstance(t, type))
        cls.module_names = tuple(t for t in module_types if isinstance(t, str))
        if cls in LAYER_TYPES:
            LAYER_TYPES.remove(cls)
        LAYER_TYPES.insert(0, cls)
        return cls

    return deco


def layer_type_for(module: nn.Module) -> type[LayerType] | None:
    """The registered layer type of ``module``: an exact class match first, then the latest matching base class."""
    for cls in LAYER_TYPES:
        if type(module) in cls.module_types or _key(type(module)) in cls.module_names:
            return cls
    bases = {_key(b) for b in type(module).__mro__}
    for cls in LAYER_TYPES:
        if isinstance(module, cls.module_types) or bases.intersection(cls.module_names):
            return cls
    return None
