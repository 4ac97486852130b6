"""Errors raised for bad input. Each message says what went wrong and what to do about it."""

from __future__ import annotations


class WherefromError(ValueError):
    """Base class of every error wherefrom raises for bad input."""


class DataOrderError(WherefromError):
    """Training data arrived in an order that is not stable (e.g. a shuffled DataLoader)."""


class LossReductionError(WherefromError):
    """A loss or target function did not return one value per example."""


class NonFiniteGradientError(WherefromError):
    """A gradient (or loss) contained NaN or infinity."""


class CheckpointMismatchError(WherefromError):
    """A checkpoint does not fit the model (missing keys, unexpected keys or wrong shapes)."""


class NonPositiveDefiniteError(WherefromError):
    """A solver that needs a positive-definite damped curvature met a direction of negative curvature."""


class UnknownNameError(WherefromError):
    """A method, solver or option name is not one wherefrom knows."""


def unknown_name(kind: str, name: str, known: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the error for an unknown ``kind`` called ``name``, listing the names that exist."""
    options = ", ".join(repr(k) for k in sorted(known))
    return UnknownNameError(f"Unknown {kind} {name!r}. Choose one of: {options}.")
