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


class CheckpointNotFoundError(CheckpointMismatchError):
    """A checkpoint path does not exist (checked when the :class:`~wherefrom.Task` is built)."""


class EmptyDataError(WherefromError):
    """A training or test set has no examples."""


class InputMismatchError(WherefromError):
    """A batch does not fit the model: the model failed on it (see the subclasses for the diagnosed causes)."""


class InputShapeError(InputMismatchError):
    """Inputs whose per-example shape differs from the one the model (or the training data) has."""


class InputDtypeError(InputMismatchError):
    """Inputs of a dtype the model cannot take (e.g. ``uint8`` images into a float model)."""


class LabelError(WherefromError):
    """A label outside ``[0, number of classes)`` (named by its example index)."""


class ParameterSelectionError(WherefromError):
    """No parameter is selected, or ``params=`` names none of the model's parameters."""


class DisconnectedFunctionError(WherefromError):
    """A loss or target function whose values do not depend on the selected parameters (its gradient is zero)."""


class DeviceError(WherefromError):
    """The selected parameters are spread over several devices, or not materialised (``meta``)."""


class NotApplicableError(WherefromError):
    """A method does not offer what was asked of it (e.g. KNN-Shapley has no self-influence)."""


class ArgumentError(WherefromError):
    """An argument outside its valid range (e.g. ``top_k``'s ``k``)."""


def unknown_name(kind: str, name: str, known: list[str] | tuple[str, ...]) -> UnknownNameError:
    """Build the error for an unknown ``kind`` called ``name``, listing the names that exist."""
    options = ", ".join(repr(k) for k in sorted(known))
    return UnknownNameError(f"Unknown {kind} {name!r}. Choose one of: {options}.")
