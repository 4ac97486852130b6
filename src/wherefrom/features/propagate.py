"""Contextual decomposition of any model that ``torch.fx`` can trace: ``cd(model, x, mask) -> (rel, irrel)``.

The model is traced once into a graph; the decomposer walks the graph in execution order and applies the registered
rule of every op that touches an input-dependent value (see :mod:`.rules`, :mod:`.lstm`). Ops on constants run as
usual. An op without a rule raises :class:`~wherefrom.features.registry.MissingRuleError` naming the op and the
graph node — nothing is skipped silently.

Masks: for a float input ``x`` ``[B, *S]`` the relevant part is ``mask ⊙ x`` and the irrelevant part
``x − mask ⊙ x`` ("absent" means 0 in the space the model reads, e.g. the normalisation mean for normalised
images). For an integer token input ``[B, T]`` the mask marks token positions and is applied to the embedding
output. Several masks per input are decomposed in one vectorised pass: give ``mask`` one more leading dimension,
``[M, *mask_shape]``, and the result gets shape ``[M, B, *out]``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.fx as fx
from torch import Tensor, nn

from wherefrom.features import lstm as _lstm  # noqa: F401  (registers the nn.LSTM rule)
from wherefrom.features import rules as _rules  # noqa: F401  (registers the built-in rules)
from wherefrom.features.parts import Parts, TokenPositions, is_decomposed
from wherefrom.features.registry import DecompositionError, MissingRuleError, describe, get_rule, has_rule


class Decomposition(NamedTuple):
    """``rel`` (the CD score of the masked group) and ``irrel``; ``rel + irrel == model(x)``."""

    rel: Tensor
    irrel: Tensor


class _RuleLeafTracer(fx.Tracer):
    """Treat every module class that has a CD rule as a leaf (its forward is not traced into)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return has_rule(type(m)) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.Graph:
    """The ``torch.fx`` graph of ``model``, with rule-bearing modules as leaves."""
    try:
        return _RuleLeafTracer().trace(model)
    except Exception as exc:  # torch.fx raises many exception types for untraceable code
        raise DecompositionError(
            f"torch.fx could not trace {type(model).__name__}: {exc}. CD needs a traceable forward (no "
            "data-dependent control flow); register a rule for the untraceable submodule so it becomes a leaf."
        ) from exc


def _fetch_attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for name in target.split("."):
        obj = getattr(obj, name)
    return obj


def _describe_node(node: fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        return f"module {describe(type(model.get_submodule(node.target)))} ('{node.target}')"
    if node.op == "call_method":
        return f"method {describe(node.target)}"
    return f"function {describe(node.target)}"


class Decomposer:
    """Trace ``model`` once, then decompose any number of (input, masks) pairs through it.

    ``model`` must be in eval mode where it matters (BatchNorm, Dropout); the rules raise otherwise.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.graph = trace(model)
        self._placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        if not self._placeholders:
            raise DecompositionError(f"{type(model).__name__}.forward takes no input to decompose.")
        self._free_after: dict[fx.Node, list[fx.Node]] = {}
        seen: set[fx.Node] = set()
        for node in reversed(list(self.graph.nodes)):
            for used in node.all_input_nodes:
                if used not in seen:
                    seen.add(used)
                    self._free_after.setdefault(node, []).append(used)

    # ------------------------------------------------------------------------------------------- graph walk
    def run(self, inp: Any, record: bool = False) -> tuple[Any, dict[str, Any]]:
        """Propagate ``inp`` (Parts, TokenPositions or a plain tensor) through the graph.

        Returns the output value and, when ``record``, every node's value by node name.
        """
        env: dict[fx.Node, Any] = {}
        recorded: dict[str, Any] = {}
        for node in self.graph.nodes:
            if node.op == "placeholder":
                value = inp if node is self._placeholders[0] else self._default(node)
            elif node.op == "get_attr":
                value = _fetch_attr(self.model, node.target)
            elif node.op == "output":
                out = fx.node.map_arg(node.args[0], lambda n: env[n])
                return out, recorded
            else:
                args = fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
                value = self._call(node, args, kwargs)
            env[node] = value
            if record:
                recorded[node.name] = value
            else:
                for done in self._free_after.get(node, ()):
                    env.pop(done, None)
        raise DecompositionError("The traced graph has no output node.")

    def _default(self, node: fx.Node) -> Any:
        if node.args:
            return node.args[0]
        raise DecompositionError(
            f"{type(self.model).__name__}.forward has a second required input '{node.target}'; CD decomposes "
            "models with one input tensor. Wrap the model so the other inputs are fixed.")

    def _call(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        decomposed = is_decomposed(args) or is_decomposed(kwargs)
        if node.op == "call_module":
            module = self.model.get_submodule(node.target)
            if not decomposed:
                return module(*args, **kwargs)
            rule = get_rule(type(module))
            if rule is None:
                raise self._missing(node, type(module))
            return rule(module, *args, **kwargs)
        if not decomposed:
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            return node.target(*args, **kwargs)
        rule = get_rule(node.target)
        if rule is None:
            raise self._missing(node, node.target)
        try:
            return rule(*args, **kwargs)
        except MissingRuleError as exc:
            raise MissingRuleError(f"{exc} (graph node '{node.name}': {node.format_node()})") from exc

    def _missing(self, node: fx.Node, target: Any) -> MissingRuleError:
        return MissingRuleError(
            f"No CD rule for {_describe_node(node, self.model)} at graph node '{node.name}' "
            f"({node.format_node()}). Register one with wherefrom.features.register_rule({describe(target)}, rule).")

    # ------------------------------------------------------------------------------------------- public API
    def decompose(self, x: Tensor, mask: Any, batch_size: int | None = None, grad: bool = False) -> Decomposition:
        """CD of ``model(x)`` for ``mask`` (see the module docstring); ``batch_size`` bounds rows per pass."""
        masks, many = normalise_masks(x, mask)
        n_masks, n_examples = masks.shape[0], x.shape[0]
        per_pass = max(1, (batch_size or 256) // max(n_examples, 1))
        rels, irrels = [], []
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            for start in range(0, n_masks, per_pass):
                inp = build_input(x, masks[start:start + per_pass])
                out, _ = self.run(inp)
                if not isinstance(out, Parts):
                    raise DecompositionError(
                        f"{type(self.model).__name__} returned {type(out).__name__}, not one tensor that depends "
                        "on the input; CD needs a model whose output is a single tensor.")
                count = min(per_pass, n_masks - start)
                rels.append(out.rel.reshape(count, n_examples, *out.rel.shape[1:]))
                irrels.append(out.irrel.reshape(count, n_examples, *out.irrel.shape[1:]))
        rel, irrel = torch.cat(rels), torch.cat(irrels)
        return Decomposition(rel, irrel) if many else Decomposition(rel[0], irrel[0])

    def trace_nodes(self, x: Tensor, mask: Any) -> dict[str, Any]:
        """Every node's decomposed value (for checks of ``rel + irrel`` against the forward pass)."""
        masks, _ = normalise_masks(x, mask)
        with torch.no_grad():
            _, recorded = self.run(build_input(x, masks), record=True)
        return recorded


def is_token_input(x: Tensor) -> bool:
    """Integer inputs are token ids (decomposed at the embedding); float inputs are decomposed directly."""
    return not (torch.is_floating_point(x) or torch.is_complex(x))


def normalise_masks(x: Tensor, mask: Any) -> tuple[Tensor, bool]:
    """Normalise ``mask`` to ``[M, *x.shape]`` (float, on x's device); ``many`` tells whether M was given."""
    m = torch.as_tensor(mask, device=x.device)
    if m.dtype == torch.bool or not torch.is_floating_point(m):
        m = m.to(x.dtype if torch.is_floating_point(x) else torch.get_default_dtype())
    elif torch.is_floating_point(x):
        m = m.to(x.dtype)
    many = m.dim() == x.dim() + 1
    per = m.shape[1:] if many else m.shape
    try:
        ok = torch.broadcast_shapes(per, x.shape) == x.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise DecompositionError(
            f"mask of shape {tuple(m.shape)} does not broadcast to the input {tuple(x.shape)}"
            + (" (token positions need [B, T] or [M, B, T])" if is_token_input(x) else "")
            + ". Give one mask broadcastable to the input, or several as [M, *mask_shape] (one more leading dim).")
    m = m if many else m.unsqueeze(0)
    return m.expand(m.shape[0], *x.shape), many


def build_input(x: Tensor, masks: Tensor) -> Parts | TokenPositions:
    """The decomposed model input for ``masks`` ``[M, *x.shape]``: rows ordered mask-major (``m·B + b``)."""
    n_masks = masks.shape[0]
    rows = n_masks * x.shape[0]
    x_rep = x.unsqueeze(0).expand(n_masks, *x.shape).reshape(rows, *x.shape[1:])
    m = masks.reshape(rows, *x.shape[1:])
    if is_token_input(x):
        return TokenPositions(x_rep, m)
    rel = x_rep * m
    return Parts(rel, x_rep - rel)


def repeat_input(x: Tensor, n_masks: int) -> Tensor:
    """``x`` repeated for ``n_masks`` masks, in the row order of :func:`build_input` (for forward references)."""
    return x.unsqueeze(0).expand(n_masks, *x.shape).reshape(n_masks * x.shape[0], *x.shape[1:])


def cd(model: nn.Module, x: Tensor, mask: Any, batch_size: int | None = None, grad: bool = False) -> Decomposition:
    """Contextual decomposition of ``model(x)`` into the part due to ``mask`` and the rest.

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace, in eval mode.
        x: a batch ``[B, *S]`` (float features) or ``[B, T]`` (integer token ids).
        mask: broadcastable to ``x`` (1 = in the group); with one extra leading dimension ``[M, ...]``, M masks
            are decomposed in one vectorised pass.
        batch_size: at most this many (mask, example) rows per pass (default 256; small passes stay in cache).
        grad: keep the autograd graph (default off).

    Returns:
        ``(rel, irrel)``, each shaped like ``model(x)`` (``[B, *out]``) or ``[M, B, *out]`` for M masks;
        ``rel + irrel == model(x)``. ``rel`` is the CD score of the group.
    """
    return Decomposer(model).decompose(x, mask, batch_size=batch_size, grad=grad)
