"""Layer-wise captures for Kronecker-factored methods (K-FAC / EK-FAC, LoGra).

For a Linear layer ``y_t = W x_t + b`` applied at positions ``t = 1..T`` (``T = 1`` for plain vectors), the
per-example gradient of a function ``f`` is ``∇_W̃ f = Σ_t δ_t ãᵀ_t`` with ``δ_t = ∂f/∂y_t`` (``[d_out]``) and
``ã_t = [x_t; 1]`` (``[d_in + 1]``, the 1 only when the bias is attributed). The bias gradient is the *last
column* of this ``[d_out, d_in + 1]`` matrix. A Conv2d layer is the same after unfolding (im2col): ``x_t`` is the
patch at output position ``t`` (``C_in·k_h·k_w`` values, in the order of ``weight.reshape(C_out, -1)``).
An Embedding layer ``y_t = W[k_t]`` is a Linear layer without bias on the one-hot input ``a_t = e_{k_t}``
(``d_in = num_embeddings``, ``d_out = embedding_dim``; positions equal to ``padding_idx`` get ``a_t = 0``, as
their gradient is zero). Its weight is stored ``[num_embeddings, dim]``, i.e. *transposed* with respect to the
``[d_out, d_in]`` gradient matrix (``LayerIO.transposed``); the one-hot inputs are materialised, so this suits
vocabularies of moderate size.

:func:`capture_layers` runs the model once on a batch and returns, for each supported layer whose weight is
among the task's parameters, ``a`` (``[B, T, d_in(+1)]``) and ``δ`` (``[B, T, d_out]``) for every example. It
differentiates the **sum** of per-example values, so ``δ`` is the exact per-example output gradient (no ``1/B``
rescaling is needed, whatever reduction the training loop used).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wherefrom.errors import WherefromError
from wherefrom.task import LossFn, Task

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d, nn.Embedding)


@dataclass
class LayerIO:
    """Per-example inputs ``a`` ``[B, T, d_in(+1)]`` and output gradients ``delta`` ``[B, T, d_out]`` of a layer."""

    name: str
    a: torch.Tensor
    delta: torch.Tensor
    has_bias: bool
    #: the parameter is stored ``[d_in, d_out]`` (nn.Embedding) rather than ``[d_out, d_in]``.
    transposed: bool = False

    def gradients(self) -> torch.Tensor:
        """Per-example gradient matrices ``G_b = Σ_t δ_{b,t} ã_{b,t}ᵀ``, ``[B, d_out, d_in(+1)]``."""
        return torch.einsum("bto,bti->boi", self.delta, self.a)


def param_name(module_name: str, leaf: str) -> str:
    """Full parameter name of ``leaf`` (``"weight"``/``"bias"``) of a module (``""`` is the root module)."""
    return f"{module_name}.{leaf}" if module_name else leaf


def kronecker_layers(task: Task) -> dict[str, nn.Module]:
    """Layers (Linear, Conv2d) whose ``weight`` is among the task's selected parameters, by module name."""
    selected = set(task.param_names)
    out = {}
    for name, module in task.model.named_modules():
        if isinstance(module, SUPPORTED_LAYERS) and param_name(name, "weight") in selected:
            out[name] = module
    return out


def uncovered_params(task: Task, layers: Mapping[str, nn.Module]) -> list[str]:
    """Selected parameters that no captured layer accounts for (they need another rule, e.g. a diagonal)."""
    covered = set()
    for name, module in layers.items():
        covered.add(param_name(name, "weight"))
        if getattr(module, "bias", None) is not None:
            covered.add(param_name(name, "bias"))
    return [n for n in task.param_names if n not in covered]


def _has_bias(task: Task, name: str, module: nn.Module) -> bool:
    return getattr(module, "bias", None) is not None and param_name(name, "bias") in task.param_names


def _layer_inputs(module: nn.Module, x: torch.Tensor, bias: bool, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(module, nn.Embedding):
        if module.max_norm is not None or module.scale_grad_by_freq or module.sparse:
            raise WherefromError("Embedding layers with max_norm, scale_grad_by_freq or sparse=True are not "
                                 "supported by layer-wise methods.")
        idx = x.reshape(x.shape[0], -1).long()
        a = F.one_hot(idx, module.num_embeddings).to(dtype or module.weight.dtype)
        if module.padding_idx is not None:
            a = a * (idx != module.padding_idx).unsqueeze(-1).to(a.dtype)
        return a
    if isinstance(module, nn.Linear):
        a = x.reshape(x.shape[0], -1, x.shape[-1])
    else:  # Conv2d
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            raise WherefromError(f"Conv2d layers with padding={module.padding!r}/{module.padding_mode!r} are not "
                                 "supported by layer-wise methods; use numeric zero padding.")
        if module.groups != 1:
            raise WherefromError("Grouped Conv2d layers are not supported by layer-wise methods.")
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                        stride=module.stride)  # [B, C_in*kh*kw, L]
        a = cols.transpose(1, 2)
    if bias:
        a = torch.cat([a, torch.ones(*a.shape[:2], 1, dtype=a.dtype, device=a.device)], dim=2)
    return a


def _layer_output_grads(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return g.reshape(g.shape[0], -1, g.shape[-1])
    return g.flatten(2).transpose(1, 2)  # [B, C_out, H, W] -> [B, L, C_out]


def capture_layers(
    task: Task, state: Mapping[str, torch.Tensor], batch: Any, fn: LossFn | None = None,
    layers: Mapping[str, nn.Module] | None = None,
) -> dict[str, LayerIO]:
    """Run ``fn`` (default: the training loss) on ``batch`` and capture ``a`` and ``δ`` of every layer.

    ``batch`` must already be prepared (``task.prepare_batch``) and the model should be in attribution mode.
    Each captured layer must be called exactly once per forward pass.
    """
    fn = task.loss_fn if fn is None else fn
    layers = kronecker_layers(task) if layers is None else dict(layers)
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in layers.items():
        def hook(mod, inp, out, name=name):
            if name in outputs:
                raise WherefromError(f"Layer {name!r} is called more than once per forward pass (shared weights); "
                                     "layer-wise methods need each layer used once.")
            inputs[name] = inp[0].detach()
            outputs[name] = out
        handles.append(module.register_forward_hook(hook))
    try:
        flat = task.flat_params(state).clone().requires_grad_(True)
        with torch.enable_grad():
            values = task.per_example(fn, flat, state, batch)
            names = list(layers)
            grads = torch.autograd.grad(values.sum(), [outputs[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    result = {}
    for name, g in zip(names, grads):
        module = layers[name]
        if g is None:
            g = torch.zeros_like(outputs[name])
        bias = _has_bias(task, name, module)
        delta = _layer_output_grads(module, g.detach())
        result[name] = LayerIO(name, _layer_inputs(module, inputs[name], bias, delta.dtype), delta, bias,
                               transposed=isinstance(module, nn.Embedding))
    return result


def layer_gradient_to_flat(
    task: Task, name: str, G: torch.Tensor, has_bias: bool, transposed: bool = False
) -> dict[str, torch.Tensor]:
    """Split per-example layer gradients ``[B, d_out, d_in(+1)]`` into ``{param name: [B, numel]}``.

    ``transposed``: the weight is stored ``[d_in, d_out]`` (nn.Embedding).
    """
    W = G[..., :-1] if has_bias else G
    if transposed:
        W = W.transpose(-1, -2)
    out = {param_name(name, "weight"): W.reshape(G.shape[0], -1)}
    if has_bias:
        out[param_name(name, "bias")] = G[..., -1]
    return out


def flat_from_layers(task: Task, ios: Mapping[str, LayerIO]) -> torch.Tensor:
    """Assemble per-example gradients ``[B, p]`` in the task's flat order from captures (zeros where uncovered)."""
    first = next(iter(ios.values()))
    B = first.a.shape[0]
    out = torch.zeros(B, task.num_params, dtype=first.a.dtype, device=first.a.device)
    slices = task.param_slices()
    for name, io in ios.items():
        for pname, block in layer_gradient_to_flat(task, name, io.gradients(), io.has_bias, io.transposed).items():
            out[:, slices[pname]] = block
    return out
