"""One meaning of damping for every preconditioner.

Every preconditioner applies ``(C + λI)⁻¹`` where ``C`` is the curvature it represents — of the mean-reduced
training objective ``R(θ) = (1/n) Σ_i ℓ_i + (wd/2)‖θ‖²`` (Hessian, Gauss-Newton or Fisher, with ``wd·I``), in the
feature space the preconditioner works in (parameters, or projected features). ``damping`` is ``λ``:

- a number: the absolute ``λ``, in the units of ``C``;
- ``"auto"``: one heuristic shared by all preconditioners, ``λ = 0.1 · tr(C_data)/d``, a tenth of the mean eigenvalue
  of the data term of the curvature being inverted (``C`` without ``wd·I``), per block for block-diagonal
  preconditioners (per layer for K-FAC/EK-FAC, per module for DataInf, per layer block for a layer-wise kernel). It
  is floored at ``eps·(1 + mean)`` (``eps`` of float64) so that it is never zero;
- ``relative(f)``: the same with factor ``f`` instead of 0.1 (``relative(0)`` is ``λ = 0``).

``None`` is accepted where it meant ``"auto"`` before (K-FAC, EK-FAC, DataInf); the other preconditioners reject
it, since a forgotten number must not silently become a heuristic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from wherefrom.configurable import CLASSES, class_key
from wherefrom.errors import WherefromError

AUTO_FACTOR = 0.1
_EPS = float(torch.finfo(torch.float64).eps)


@dataclass(frozen=True)
class Relative:
    """Damping ``λ = factor · tr(C_data)/d`` (see the module docstring)."""

    factor: float

    def __post_init__(self) -> None:
        if not self.factor >= 0:
            raise WherefromError(f"A relative damping factor must be >= 0, got {self.factor}.")


CLASSES[class_key(Relative)] = Relative  # saved configs rebuild it by name


def relative(factor: float) -> Relative:
    """Damping relative to the mean eigenvalue of the curvature being inverted: ``λ = factor · tr(C_data)/d``."""
    return Relative(float(factor))


Damping = float | str | Relative | None


def check_damping(value: Any, name: str, allow_none: bool) -> float | str | Relative | None:
    """Validate a damping value; returns it normalised (numbers as float, ``"auto"`` kept, ``None`` when allowed)."""
    if value is None:
        if allow_none:
            return None
        raise WherefromError(f"The {name} preconditioner has no relative damping default for damping=None; pass a "
                             "number, or damping='auto' for 0.1 × the mean eigenvalue of the curvature "
                             "(damping=None is accepted by kfac, ekfac and datainf).")
    if isinstance(value, str):
        if value != "auto":
            raise WherefromError(f"damping must be a number >= 0, 'auto' or wherefrom.curvature.relative(f); got "
                                 f"{value!r}.")
        return value
    if isinstance(value, Relative):
        return value
    if isinstance(value, dict) and "relative" in value:  # as written in a saved config
        return Relative(float(value["relative"]))
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise WherefromError(f"damping must be a number >= 0, 'auto' or relative(f); got {value!r}.") from exc
    if not number >= 0:
        raise WherefromError(f"damping must be >= 0, got {value}.")
    return number


def is_relative(damping: Any) -> bool:
    """Whether ``damping`` depends on the curvature (``"auto"``, ``relative(f)``, ``None``)."""
    return damping is None or isinstance(damping, (str, Relative))


def resolve_damping(damping: Any, mean_eigenvalue: float | torch.Tensor) -> float:
    """``λ`` for a block whose data-term curvature has mean eigenvalue ``mean_eigenvalue`` (``tr/d``)."""
    if not is_relative(damping):
        return float(damping)
    factor = damping.factor if isinstance(damping, Relative) else AUTO_FACTOR
    if factor == 0:
        return 0.0
    mean = float(mean_eigenvalue)
    return max(factor * mean, _EPS * (1.0 + abs(mean)))


def damping_config(damping: Any) -> Any:
    """A JSON-able form of a damping value."""
    return {"relative": damping.factor} if isinstance(damping, Relative) else damping
