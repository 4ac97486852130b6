"""One registry of contextual-decomposition rules: module classes, functions and tensor-method names.

A rule receives the node's arguments with every input-dependent value given as
:class:`~wherefrom.features.parts.Parts` (or :class:`~wherefrom.features.parts.TokenPositions`) and returns the
node's decomposed output. Calling conventions:

* module class ``M``: ``rule(module, *args, **kwargs)``
* function ``f`` (``torch.relu``, ``operator.add``, ``F.max_pool2d``, ...): ``rule(*args, **kwargs)``
* method name ``"view"``: ``rule(self, *args, **kwargs)``

An op that touches a decomposed value and has no rule raises :class:`MissingRuleError`, which names the op and the
graph node. Module classes match exactly (a subclass may override ``forward``, so it needs its own rule).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wherefrom.errors import WherefromError

Rule = Callable[..., Any]

_RULES: dict[Any, Rule] = {}


class MissingRuleError(WherefromError):
    """A graph node applies an op to a decomposed value and no CD rule is registered for that op."""


class DecompositionError(WherefromError):
    """A model or input cannot be decomposed as given (untraceable model, training-mode layer, bad mask)."""


def _key(target: Any) -> Any:
    if isinstance(target, (str, type)) or callable(target):
        return target
    raise WherefromError(f"register_rule needs a module class, a function or a tensor-method name, not {target!r}.")


def register_rule(target: Any, rule: Rule | None = None, *, replace: bool = True) -> Any:
    """Register ``rule`` for ``target`` (a module class, a function, or a tensor-method name such as ``"view"``).

    Usable directly, ``register_rule(MyLayer, my_rule)``, or as a decorator, ``@register_rule(MyLayer)``.
    A module class with a rule becomes a leaf of the traced graph: its ``forward`` is not traced into.
    ``replace=False`` refuses to overwrite an existing rule.
    """
    key = _key(target)

    def add(fn: Rule) -> Rule:
        if not replace and key in _RULES:
            raise WherefromError(f"A CD rule for {describe(target)} is already registered; pass replace=True.")
        _RULES[key] = fn
        return fn

    return add if rule is None else add(rule)


def unregister_rule(target: Any) -> None:
    """Remove the rule of ``target`` (no error if there is none)."""
    _RULES.pop(_key(target), None)


def has_rule(target: Any) -> bool:
    """Whether a rule is registered for ``target``."""
    return target in _RULES


def get_rule(target: Any) -> Rule | None:
    """The rule registered for ``target``, or ``None``."""
    return _RULES.get(target)


def describe(target: Any) -> str:
    """A readable name of a rule target (``torch.nn.Linear``, ``torch.relu``, ``Tensor.view``)."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    if "<locals>" in name or name.startswith("_VariableFunctionsClass."):
        name = getattr(target, "__name__", name)
    if module in ("_operator", "builtins"):
        module = "operator" if module == "_operator" else ""
    return f"{module}.{name}" if module else name


def registered_targets() -> list[str]:
    """Readable names of every target that has a rule, sorted."""
    return sorted(describe(t) for t in _RULES)
