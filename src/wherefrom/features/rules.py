"""The built-in contextual-decomposition rules, each in one place (registered in :mod:`.registry`).

Notation: the input of a node is ``x = β + γ`` (``rel`` + ``irrel``), its output ``β' + γ'``.

* Affine maps ``Wx + b`` (Linear, Conv1d/2d/3d, ``F.linear``, ``F.conv*``, eval BatchNorm as ``s⊙x + t``):
  ``β' = Wβ + b·|Wβ|/(|Wβ| + |Wγ|)``, ``γ' = Wγ + b·|Wγ|/(|Wβ| + |Wγ|)`` per output unit (per location for
  convolutions); ties ``0/0`` as in :func:`~wherefrom.features.parts.relevant_share`.
* ReLU / LeakyReLU: ``β' = f(β)``, ``γ' = f(β+γ) − f(β)``. Tanh / Sigmoid: two-player Shapley
  (:func:`~wherefrom.features.shapley.shapley_two`).
* MaxPool: the argmax of the pooled ``β + γ`` picks the entries of both parts.
* Linear maps without offset (AvgPool, AdaptiveAvgPool, eval Dropout, Flatten, reshape/view/permute/transpose,
  indexing, cat/stack, mean/sum, scalar multiply): applied to each part.
* ``u + v`` of two decomposed values adds the parts; ``u + c`` with a constant ``c`` splits ``c`` like a bias.
* Embedding: the embedding of a masked position goes to β, of an unmasked one to γ.
* ``nn.LSTM``: :mod:`wherefrom.features.lstm`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wherefrom.features.parts import Parts, TokenPositions, add_bias, is_decomposed
from wherefrom.features.registry import DecompositionError, MissingRuleError, describe, register_rule
from wherefrom.features.shapley import relevant_first, shapley_two


def _require_constant(op: Any, *values: Any) -> None:
    """Refuse a decomposed value in a position where the rule only supports constants."""
    if is_decomposed(values):
        raise MissingRuleError(
            f"{describe(op)} is applied with input-dependent values in more than one argument; CD has no rule for "
            "that. Register one with wherefrom.features.register_rule.")


def _as_parts(x: Any, op: Any) -> Parts:
    if isinstance(x, Parts):
        return x
    if isinstance(x, TokenPositions):
        raise MissingRuleError(
            f"{describe(op)} is applied to integer token ids; CD decomposes token inputs at the embedding lookup "
            "(nn.Embedding), so only index operations may come before it.")
    raise MissingRuleError(f"{describe(op)} got {type(x).__name__} where a decomposed tensor was expected.")


# ----------------------------------------------------------------------------------------------- affine maps
def _bias_view(bias: Tensor | None, ndim: int) -> Tensor | None:
    """Shape a per-channel bias ``[C]`` to broadcast over ``[N, C, *spatial]``."""
    return None if bias is None else bias.reshape((-1,) + (1,) * (ndim - 2))


def _linear_module(module: nn.Linear, x: Any) -> Parts:
    p = _as_parts(x, type(module))
    return add_bias(F.linear(p.rel, module.weight), F.linear(p.irrel, module.weight), module.bias, p)


def _conv_module(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: Any) -> Parts:
    p = _as_parts(x, type(module))
    rel = module._conv_forward(p.rel, module.weight, None)
    irrel = module._conv_forward(p.irrel, module.weight, None)
    return add_bias(rel, irrel, _bias_view(module.bias, rel.dim()), p)


def _functional_linear(x: Any, weight: Tensor, bias: Tensor | None = None) -> Parts:
    _require_constant(F.linear, weight, bias)
    p = _as_parts(x, F.linear)
    return add_bias(F.linear(p.rel, weight), F.linear(p.irrel, weight), bias, p)


def _functional_conv(fn: Callable[..., Tensor]) -> Callable[..., Parts]:
    def rule(x: Any, weight: Tensor, bias: Tensor | None = None, *args: Any, **kwargs: Any) -> Parts:
        _require_constant(fn, weight, bias, args, kwargs)
        p = _as_parts(x, fn)
        rel, irrel = fn(p.rel, weight, None, *args, **kwargs), fn(p.irrel, weight, None, *args, **kwargs)
        return add_bias(rel, irrel, _bias_view(bias, rel.dim()), p)

    return rule


def _batch_norm(module: nn.modules.batchnorm._BatchNorm, x: Any) -> Parts:
    """Eval BatchNorm as the per-channel affine map ``s⊙x + t``, ``s = w/√(var+ε)``, ``t = b − mean·s``."""
    if module.training or module.running_mean is None or module.running_var is None:
        raise DecompositionError(
            f"{type(module).__name__} is in training mode or keeps no running statistics: its output couples the "
            "examples of a batch, so it has no per-example decomposition. Call model.eval() first.")
    p = _as_parts(x, type(module))
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    s, t = _bias_view(scale, p.rel.dim()), _bias_view(shift, p.rel.dim())
    return add_bias(p.rel * s, p.irrel * s, t, p)


def _normalise_parts(p: Parts, n_dims: int, centre: bool, eps: float, weight: Tensor | None,
                     bias: Tensor | None) -> Parts:
    """Layer / RMS normalisation with its statistics frozen at the full input ``x = β + γ``.

    With ``σ`` the standard deviation (LayerNorm) or root mean square (RMSNorm) of ``x`` over the last ``n_dims``
    dimensions, the map ``t ↦ (t − mean(t))·w/√(σ² + ε)`` (no centring for RMSNorm) is linear, so
    ``β' = (β − mean β)·w/√(σ² + ε)``, ``γ'`` likewise, and the bias ``b`` is split by the bias rule: the parts sum
    to the layer's output exactly. A part that is constant over the normalised dimensions gets nothing.
    """
    dims = tuple(range(-n_dims, 0))
    full = p.full
    if centre:
        var = torch.var(full, dim=dims, unbiased=False, keepdim=True)
    else:
        var = full.pow(2).mean(dim=dims, keepdim=True)
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight

    def normalise(t: Tensor) -> Tensor:
        return (t - t.mean(dim=dims, keepdim=True) if centre else t) * scale

    return add_bias(normalise(p.rel), normalise(p.irrel), bias, p)


def _layer_norm_module(module: nn.LayerNorm, x: Any) -> Parts:
    p = _as_parts(x, type(module))
    return _normalise_parts(p, len(module.normalized_shape), True, module.eps, module.weight, module.bias)


def _functional_layer_norm(x: Any, normalized_shape: Sequence[int], weight: Tensor | None = None,
                           bias: Tensor | None = None, eps: float = 1e-5) -> Parts:
    p = _as_parts(x, F.layer_norm)
    return _normalise_parts(p, len(normalized_shape), True, eps, weight, bias)


def _rms_eps(eps: float | None, x: Tensor) -> float:
    return torch.finfo(x.dtype).eps if eps is None else eps


def _rms_norm_module(module: nn.RMSNorm, x: Any) -> Parts:
    p = _as_parts(x, type(module))
    return _normalise_parts(p, len(module.normalized_shape), False, _rms_eps(module.eps, p.rel), module.weight, None)


def _functional_rms_norm(x: Any, normalized_shape: Sequence[int], weight: Tensor | None = None,
                         eps: float | None = None) -> Parts:
    p = _as_parts(x, F.rms_norm)
    return _normalise_parts(p, len(normalized_shape), False, _rms_eps(eps, p.rel), weight, None)


# ----------------------------------------------------------------------------------------------- activations
def _relu_like(slope_of: Callable[..., float]) -> Callable[..., Parts]:
    def rule(*args: Any, **kwargs: Any) -> Parts:
        first = args[0]
        module = first if isinstance(first, nn.Module) else None
        x = args[1] if module is not None else first
        slope = slope_of(module, *args[2 if module is not None else 1:], **kwargs)
        p = _as_parts(x, type(module) if module is not None else F.relu)
        f = (lambda t: F.relu(t)) if slope == 0.0 else (lambda t: F.leaky_relu(t, slope))
        return relevant_first(f, p.rel, p.irrel)

    return rule


def _no_slope(module: Any, *args: Any, **kwargs: Any) -> float:
    return 0.0


def _leaky_slope(module: Any, *args: Any, **kwargs: Any) -> float:
    if module is not None:
        return float(module.negative_slope)
    return float(args[0]) if args else float(kwargs.get("negative_slope", 0.01))


def _smooth(f: Callable[[Tensor], Tensor], with_module: bool) -> Callable[..., Parts]:
    def rule(*args: Any, **kwargs: Any) -> Parts:
        x = args[1] if with_module else args[0]
        p = _as_parts(x, f)
        return shapley_two(f, p.rel, p.irrel)

    return rule


def _smooth_module(module: nn.Module, x: Any) -> Parts:
    """Any elementwise activation module (GELU, SiLU, ELU, Softplus, ...): the two-player Shapley rule of ``module``."""
    p = _as_parts(x, type(module))
    return shapley_two(module, p.rel, p.irrel)


def _smooth_function(fn: Callable[..., Tensor]) -> Callable[..., Parts]:
    """The functional form ``fn(x, *args, **kwargs)`` of an elementwise activation: Shapley rule of the bound call."""
    def rule(x: Any, *args: Any, **kwargs: Any) -> Parts:
        p = _as_parts(x, fn)
        return shapley_two(lambda t: fn(t, *args, **kwargs), p.rel, p.irrel)

    return rule


def _full(x: Any) -> Any:
    return x.full if isinstance(x, Parts) else x


def _scaled_dot_product_attention(query: Any, key: Any, value: Any, attn_mask: Tensor | None = None,
                                  dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                  enable_gqa: bool = False) -> Parts:
    """Attention with its weights frozen at the full input: ``A = softmax(q kᵀ·scale + mask)`` from ``q = β_q + γ_q``
    and ``k = β_k + γ_k``, then ``β' = A β_v``, ``γ' = A γ_v`` (attention is linear in the values for fixed weights).

    The parts sum to the attention output exactly; how the input moves the weights themselves is not attributed.
    """
    if dropout_p:
        raise DecompositionError("scaled_dot_product_attention with dropout_p > 0 has no per-example "
                                 "decomposition: call model.eval() (or pass dropout_p=0).")
    p = _as_parts(value, F.scaled_dot_product_attention)
    q, k = _full(query), _full(key)

    def attend(v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                              enable_gqa=enable_gqa)

    return Parts(attend(p.rel), attend(p.irrel))


# ----------------------------------------------------------------------------------------------- pooling
def _gather_pooled(p: Parts, out: Tensor, idx: Tensor) -> Parts:
    """Pick, from each part, the entries at the flat spatial ``idx`` of the pooled full activation."""
    def pick(t: Tensor) -> Tensor:
        return t.flatten(2).gather(2, idx.flatten(2)).view_as(out)

    return Parts(pick(p.rel), pick(p.irrel))


def _max_pool_module(module: nn.Module, x: Any) -> Any:
    p = _as_parts(x, type(module))
    if p.rel.dim() < 3:
        raise DecompositionError(f"{type(module).__name__} got an unbatched input; CD needs [N, C, *spatial].")
    keep = module.return_indices
    module.return_indices = True
    try:
        out, idx = module(p.full)
    finally:
        module.return_indices = keep
    parts = _gather_pooled(p, out, idx)
    return (parts, idx) if keep else parts


def _functional_max_pool(fn: Callable[..., Any]) -> Callable[..., Any]:
    def rule(x: Any, *args: Any, **kwargs: Any) -> Any:
        _require_constant(fn, args, kwargs)
        p = _as_parts(x, fn)
        want = bool(kwargs.pop("return_indices", False))
        if len(args) >= 6:
            want, args = bool(args[5]), args[:5]
        out, idx = fn(p.full, *args, return_indices=True, **kwargs)
        parts = _gather_pooled(p, out, idx)
        return (parts, idx) if want else parts

    return rule


# ----------------------------------------------------------------------------------------------- linear maps
def _module_each_part(module: nn.Module, x: Any, *args: Any, **kwargs: Any) -> Parts:
    """Modules that are linear maps without offset: apply them to each part."""
    _require_constant(type(module), args, kwargs)
    return _as_parts(x, type(module)).map(lambda t: module(t, *args, **kwargs))


def _dropout_module(module: nn.Module, x: Any) -> Parts:
    if module.training:
        raise DecompositionError(
            f"{type(module).__name__} is in training mode (random masks); call model.eval() before decomposing.")
    return _as_parts(x, type(module))


def _functional_dropout(x: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Parts:
    if training:
        raise DecompositionError("F.dropout is called with training=True (random masks); trace the model in "
                                 "eval mode (model.eval()) so that dropout is the identity.")
    return _as_parts(x, F.dropout)


def _first_arg_linear(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Functions linear in their first argument (shape ops, pooling averages, sums): map each part (or ids)."""
    def rule(x: Any, *args: Any, **kwargs: Any) -> Any:
        _require_constant(fn, args, kwargs)
        if isinstance(x, TokenPositions):
            return x.map(lambda t: fn(t, *args, **kwargs))
        return _as_parts(x, fn).map(lambda t: fn(t, *args, **kwargs))

    return rule


def _method_linear(name: str) -> Callable[..., Any]:
    def rule(x: Any, *args: Any, **kwargs: Any) -> Any:
        _require_constant(name, args, kwargs)
        if isinstance(x, TokenPositions):
            return x.map(lambda t: getattr(t, name)(*args, **kwargs))
        return _as_parts(x, name).map(lambda t: getattr(t, name)(*args, **kwargs))

    return rule


def _method_conversion(name: str) -> Callable[..., Any]:
    """dtype / device conversions: both parts; for token ids only the ids (the mask stays float)."""
    def rule(x: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(x, TokenPositions):
            ids = getattr(x.ids, name)(*args, **kwargs)
            return TokenPositions(ids, x.mask.to(ids.device))
        return _as_parts(x, name).map(lambda t: getattr(t, name)(*args, **kwargs))

    return rule


def _split_like(fn: Callable[..., Any]) -> Callable[..., Any]:
    """chunk / split / unbind: one decomposed value per piece."""
    def rule(x: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        _require_constant(fn, args, kwargs)
        if isinstance(x, TokenPositions):
            ids, masks = fn(x.ids, *args, **kwargs), fn(x.mask, *args, **kwargs)
            return tuple(TokenPositions(a, b) for a, b in zip(ids, masks))
        p = _as_parts(x, fn)
        return tuple(Parts(r, i) for r, i in zip(fn(p.rel, *args, **kwargs), fn(p.irrel, *args, **kwargs)))

    return rule


def _join(fn: Callable[..., Tensor]) -> Callable[..., Parts]:
    """cat / stack of decomposed tensors."""
    def rule(tensors: Any, *args: Any, **kwargs: Any) -> Parts:
        _require_constant(fn, args, kwargs)
        items = list(tensors)
        if not all(isinstance(t, Parts) for t in items):
            raise MissingRuleError(
                f"{describe(fn)} joins decomposed tensors with constants or token ids; CD has no rule for that "
                "(the constant block has no relevant/irrelevant owner). Register one with register_rule.")
        return Parts(fn([t.rel for t in items], *args, **kwargs), fn([t.irrel for t in items], *args, **kwargs))

    return rule


def _method_join(name: str) -> Callable[..., Parts]:
    return _join(getattr(torch, name))


def _getitem(obj: Any, index: Any) -> Any:
    _require_constant(operator.getitem, index)
    if isinstance(obj, (Parts, TokenPositions)):
        return obj.map(lambda t: t[index])
    return obj[index]


def _shape_query(name: str) -> Callable[..., Any]:
    """size / dim / shape: the same for either part as for the activation."""
    def rule(x: Any, *args: Any, **kwargs: Any) -> Any:
        t = x.ids if isinstance(x, TokenPositions) else _as_parts(x, name).rel
        attr = getattr(t, name)
        return attr(*args, **kwargs) if callable(attr) else attr

    return rule


def _getattr(obj: Any, name: str, *default: Any) -> Any:
    if name not in ("shape", "dtype", "device", "ndim"):
        raise MissingRuleError(f"getattr(…, {name!r}) on a decomposed tensor has no CD rule.")
    t = obj.ids if isinstance(obj, TokenPositions) else _as_parts(obj, getattr).rel
    return getattr(t, name)


# ----------------------------------------------------------------------------------------------- arithmetic
def _add(a: Any, b: Any, *, alpha: float = 1) -> Parts:
    if isinstance(b, Parts) and alpha != 1:
        b = b.map(lambda t: t * alpha)
    elif not isinstance(b, Parts) and alpha != 1:
        b = b * alpha
    if isinstance(a, Parts) and isinstance(b, Parts):
        return Parts(a.rel + b.rel, a.irrel + b.irrel)
    p, c = (a, b) if isinstance(a, Parts) else (b, a)
    p = _as_parts(p, operator.add)
    _require_constant(operator.add, c)
    return add_bias(p.rel, p.irrel, c)


def _neg(a: Any) -> Parts:
    return _as_parts(a, operator.neg).map(lambda t: -t)


def _sub(a: Any, b: Any, *, alpha: float = 1) -> Parts:
    if isinstance(b, Parts):
        return _add(a, _neg(b), alpha=alpha)
    return _add(a, -b, alpha=alpha) if isinstance(a, Parts) else _add(_neg(_as_parts(b, operator.sub)), a)


def _mul(a: Any, b: Any) -> Parts:
    if isinstance(a, Parts) and isinstance(b, Parts):
        raise MissingRuleError(
            "The product of two input-dependent tensors has no built-in CD rule (only scaling by a constant). "
            "Register one with wherefrom.features.register_rule(operator.mul, rule).")
    p, c = (a, b) if isinstance(a, Parts) else (b, a)
    _require_constant(operator.mul, c)
    return _as_parts(p, operator.mul).map(lambda t: t * c)


def _div(a: Any, b: Any) -> Parts:
    if not isinstance(a, Parts) or is_decomposed(b):
        raise MissingRuleError("Division by an input-dependent tensor has no CD rule (only division by constants).")
    return a.map(lambda t: t / b)


# ----------------------------------------------------------------------------------------------- embedding
def _embed(lookup: Callable[[Tensor], Tensor], tokens: Any, op: Any) -> Parts:
    if not isinstance(tokens, TokenPositions):
        raise MissingRuleError(f"{describe(op)} got a decomposed float tensor; CD splits token inputs at the "
                               "embedding, so the embedding must read the model's integer input.")
    e = lookup(tokens.ids)
    m = tokens.mask.to(e.dtype).unsqueeze(-1)
    return Parts(e * m, e * (1 - m))


def _embedding_module(module: nn.Embedding, tokens: Any) -> Parts:
    return _embed(module, tokens, type(module))


def _functional_embedding(tokens: Any, weight: Tensor, *args: Any, **kwargs: Any) -> Parts:
    _require_constant(F.embedding, weight, args, kwargs)
    return _embed(lambda ids: F.embedding(ids, weight, *args, **kwargs), tokens, F.embedding)


# ----------------------------------------------------------------------------------------------- registration
def _register_builtins() -> None:
    for cls in (nn.Linear,):
        register_rule(cls, _linear_module)
    for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        register_rule(cls, _conv_module)
    register_rule(F.linear, _functional_linear)
    for fn in (F.conv1d, F.conv2d, F.conv3d):
        register_rule(fn, _functional_conv(fn))
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        register_rule(cls, _batch_norm)

    register_rule(nn.ReLU, _relu_like(_no_slope))
    register_rule(nn.LeakyReLU, _relu_like(_leaky_slope))
    for fn in (torch.relu, F.relu, "relu"):
        register_rule(fn, _relu_like(_no_slope))
    register_rule(F.leaky_relu, _relu_like(_leaky_slope))
    register_rule(nn.Tanh, _smooth(torch.tanh, with_module=True))
    register_rule(nn.Sigmoid, _smooth(torch.sigmoid, with_module=True))
    for fn in (torch.tanh, F.tanh, "tanh"):
        register_rule(fn, _smooth(torch.tanh, with_module=False))
    for fn in (torch.sigmoid, F.sigmoid, "sigmoid"):
        register_rule(fn, _smooth(torch.sigmoid, with_module=False))
    for cls in (nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.Softplus, nn.Softsign, nn.LogSigmoid,
                nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Tanhshrink):
        register_rule(cls, _smooth_module)
    for fn in (F.gelu, F.silu, F.mish, F.elu, F.celu, F.selu, F.softplus, F.softsign, F.logsigmoid, F.hardtanh,
               F.hardswish, F.hardsigmoid, F.tanhshrink):
        register_rule(fn, _smooth_function(fn))
    register_rule(F.scaled_dot_product_attention, _scaled_dot_product_attention)
    register_rule(nn.LayerNorm, _layer_norm_module)
    register_rule(F.layer_norm, _functional_layer_norm)
    register_rule(nn.RMSNorm, _rms_norm_module)
    register_rule(F.rms_norm, _functional_rms_norm)

    for cls in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d):
        register_rule(cls, _max_pool_module)
    for fn in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d):
        register_rule(fn, _functional_max_pool(fn))
    for cls in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveAvgPool3d, nn.Flatten, nn.Unflatten, nn.Identity):
        register_rule(cls, _module_each_part)
    for cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
        register_rule(cls, _dropout_module)
    register_rule(F.dropout, _functional_dropout)

    for fn in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
               F.adaptive_avg_pool3d, torch.flatten, torch.reshape, torch.permute, torch.transpose,
               torch.squeeze, torch.unsqueeze, torch.mean, torch.sum, torch.movedim):
        register_rule(fn, _first_arg_linear(fn))
    for name in ("view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                 "t", "mean", "sum", "expand", "repeat", "movedim", "view_as", "reshape_as", "expand_as"):
        register_rule(name, _method_linear(name))
    for name in ("to", "float", "double", "half", "type", "cpu", "cuda", "long", "int"):
        register_rule(name, _method_conversion(name))
    for fn in (torch.chunk, torch.split, torch.unbind):
        register_rule(fn, _split_like(fn))
    for name in ("chunk", "split", "unbind"):
        register_rule(name, _split_like(lambda t, *a, _n=name, **k: getattr(t, _n)(*a, **k)))
    register_rule(torch.cat, _join(torch.cat))
    register_rule(torch.stack, _join(torch.stack))
    register_rule(operator.getitem, _getitem)
    for name in ("size", "dim"):
        register_rule(name, _shape_query(name))
    register_rule(getattr, _getattr)

    for fn in (operator.add, operator.iadd, torch.add, "add"):
        register_rule(fn, _add)
    for fn in (operator.sub, operator.isub, torch.sub, "sub"):
        register_rule(fn, _sub)
    for fn in (operator.mul, operator.imul, torch.mul, "mul"):
        register_rule(fn, _mul)
    for fn in (operator.truediv, operator.itruediv, torch.div, "div"):
        register_rule(fn, _div)
    register_rule(operator.neg, _neg)
    register_rule(torch.neg, _neg)

    register_rule(nn.Embedding, _embedding_module)
    register_rule(F.embedding, _functional_embedding)


_register_builtins()
