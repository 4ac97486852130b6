"""Input checks run by :func:`wherefrom.batches.batch_loop`: the first batch of a pass, and every batch's labels.

The first batch of every pass that computes a per-example function is evaluated once, with the selected parameters
requiring gradients (the only extra cost: one forward of one batch). When the model fails on it, the failure is
diagnosed — integer inputs into a float model, a per-example shape other than the training data's, anything else
with the batch's shapes — and raised as an :class:`~wherefrom.errors.InputMismatchError` naming the culprit. Then:
the labels read by the built-in targets must lie in ``[0, C)`` (checked on every batch: one ``aminmax`` of a
``[B]`` tensor), the function must return one value per example, and those values must depend on the parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from wherefrom import targets
from wherefrom.errors import (
    DisconnectedFunctionError,
    InputDtypeError,
    InputMismatchError,
    InputShapeError,
    LabelError,
    WherefromError,
)

#: built-in functions that read class labels from ``batch[1]`` and index the outputs' last dimension with them.
LABEL_FUNCTIONS = (targets.cross_entropy, targets.margin, targets.log_probability)
_IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index: such labels contribute 0 and are allowed


def data_name(what: str) -> str:
    """Which data a pass reads, for messages: ``"training"`` for the training function, ``"test"`` for the target."""
    if what.startswith("training"):
        return "training"
    return "test" if what == "target" else what


def input_tensors(task: Any, batch: Any) -> dict[str, torch.Tensor]:
    """The model inputs of ``batch`` (``task.input_fn``) that are tensors, by position or key."""
    inputs = task.input_fn(batch)
    if isinstance(inputs, torch.Tensor):
        return {"inputs": inputs}
    if isinstance(inputs, dict):
        return {f"inputs[{k!r}]": v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    if isinstance(inputs, (tuple, list)):
        return {f"inputs[{k}]": v for k, v in enumerate(inputs) if isinstance(v, torch.Tensor)}
    return {}


def signature(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (per-example shape, dtype)}`` of a batch's input tensors."""
    return {k: (tuple(v.shape[1:]), str(v.dtype).replace("torch.", "")) for k, v in tensors.items()}


def _first_layer_hint(model: nn.Module) -> str:
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return f" The model's first layer is Linear({module.in_features} → {module.out_features}): it expects " \
                   f"inputs [B, ..., {module.in_features}]."
        if isinstance(module, nn.modules.conv._ConvNd):
            n = len(module.kernel_size)
            return f" The model's first layer is Conv{n}d with {module.in_channels} input channels: it expects " \
                   f"inputs [B, {module.in_channels}, {', '.join(['…'] * n)}]."
        if isinstance(module, nn.Embedding):
            return f" The model's first layer is Embedding({module.num_embeddings}, {module.embedding_dim}): it " \
                   "expects integer token ids."
    return ""


def diagnose_model_failure(task: Any, batch: Any, exc: Exception, what: str, start: int) -> WherefromError:
    """The error to raise when the model failed on the first ``what`` batch (examples from ``start``)."""
    data = data_name(what)
    tensors = input_tensors(task, batch)
    sig = signature(tensors)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    integer = [k for k, v in tensors.items() if not v.is_floating_point() and v.dtype != torch.bool]
    dtype_words = ("type", "dtype", "Byte", "Long", "Int", "Char", "Half", "Float", "Double")
    if integer and any(w in reason for w in dtype_words) and not isinstance(exc, IndexError):
        found = ", ".join(f"{k} of dtype {sig[k][1]}" for k in integer)
        return InputDtypeError(
            f"The model failed on the {data} data's {found}: it computes in {str(task.dtype).replace('torch.', '')} "
            f"({reason}). Convert the inputs to floating point before attributing, e.g. X.float() / 255 for uint8 "
            "images (torchvision's ToTensor() does this)."
        )
    reference = getattr(task, "_input_signature", None)
    if reference is not None and {k: s for k, (s, _) in reference.items()} != {k: s for k, (s, _) in sig.items()}:
        expected = {k: s for k, (s, _) in reference.items()}
        actual = {k: s for k, (s, _) in sig.items()}
        return InputShapeError(
            f"The {data} data has per-example input shape {actual} but the data seen first (the training data) "
            f"had {expected}, and the model failed on it ({reason}). Pass {data} inputs shaped like the training "
            "inputs." + _first_layer_hint(task.model)
        )
    shapes = {k: (tuple(v.shape), sig[k][1]) for k, v in tensors.items()}
    return InputMismatchError(
        f"The model failed on the first {data} batch (examples {start}..{start + _length(tensors) - 1}; inputs "
        f"(shape, dtype) {shapes}): {reason}. Check that the inputs have the shape and dtype the model was "
        "trained on and that input_fn= picks the model's inputs out of a batch (default: batch[0])."
        + _first_layer_hint(task.model)
    )


def _length(tensors: Mapping[str, torch.Tensor]) -> int:
    return next((int(v.shape[0]) for v in tensors.values() if v.dim() > 0), 1)


def uses_labels(fn: Any) -> bool:
    """Whether ``fn`` (or the function a probe wraps) is a built-in target that indexes outputs by labels."""
    return getattr(fn, "fn", fn) in LABEL_FUNCTIONS


def check_labels(fn: Any, batch: Any, num_classes: int, start: int, what: str) -> None:
    """Raise :class:`LabelError` naming the examples whose labels are not integers in ``[0, num_classes)``."""
    data = data_name(what)
    try:
        y = targets.labels_of(batch)
    except TypeError:
        return  # the function itself raises its message
    if not isinstance(y, torch.Tensor) or y.numel() == 0:
        return
    if y.is_floating_point():
        fractional = (y != torch.round(y)).reshape(-1)
        if bool(fractional.any()):
            idx = (start + fractional.nonzero()[:, 0]).tolist()
            raise LabelError(
                f"Labels of {data} examples {idx[:10]} are not whole numbers ({y.reshape(-1)[fractional][:5].tolist()}"
                "): class labels must be integers in [0, number of classes). Pass integer class indices (or "
                "loss_fn= / target_fn= for soft labels)."
            )
    lo, hi = (int(v) for v in torch.aminmax(y.reshape(-1)))
    allowed_low = _IGNORE_INDEX if getattr(fn, "fn", fn) is targets.cross_entropy else 0
    if (lo >= 0 or lo == allowed_low) and hi < num_classes:
        return
    flat = y.reshape(y.shape[0], -1)
    bad = ((flat < 0) & (flat != allowed_low)) | (flat >= num_classes)
    rows = bad.any(1).nonzero()[:, 0]
    examples = (start + rows).tolist()
    values = [flat[r][bad[r]][0].item() for r in rows[:5].tolist()]
    raise LabelError(
        f"Labels of {data} examples {examples[:10]} are {values} but the model has {num_classes} output classes: "
        f"labels must lie in [0, {num_classes}). Check the label encoding (1-based labels: subtract 1) or the "
        "model's output size."
    )


def validate_batch(task: Any, state: Mapping[str, torch.Tensor], batch: Any, fn: Any, what: str,
                   start: int = 0) -> int | None:
    """Check the first batch of a pass computing ``fn``; returns the number of classes when labels are checked.

    Raises :class:`InputMismatchError` (and subclasses) when the model fails on the batch, :class:`LabelError`,
    :class:`~wherefrom.errors.LossReductionError` unless ``fn`` gives one value per example, and
    :class:`DisconnectedFunctionError` when its values do not depend on the selected parameters.
    """
    tensors = input_tensors(task, batch)
    if not hasattr(task, "_input_signature") or task._input_signature is None:
        task._input_signature = signature(tensors)
    flat = task.flat_params(state).requires_grad_(True)
    with torch.enable_grad():
        try:
            outputs = task.outputs(flat, state, batch)
        except (RuntimeError, IndexError, TypeError, ValueError) as exc:
            if isinstance(exc, WherefromError):
                raise
            raise diagnose_model_failure(task, batch, exc, what, start) from exc
        num_classes = None
        if uses_labels(fn) and isinstance(outputs, torch.Tensor) and outputs.dim() == 2:
            num_classes = int(outputs.shape[-1])
            check_labels(fn, batch, num_classes, start, what)
        if getattr(fn, "aux", None) is not None:
            return num_classes
        try:
            values = getattr(fn, "fn", fn)(outputs, batch)
        except (RuntimeError, IndexError, TypeError, ValueError) as exc:
            if isinstance(exc, WherefromError):
                raise
            raise WherefromError(
                f"The {what} function failed on the first batch (examples {start}..{start + _length(tensors) - 1}, "
                f"model outputs of shape {tuple(outputs.shape)}): {str(exc).strip().splitlines()[0]}. It is called "
                "as fn(outputs, batch) and must return one value per example."
            ) from exc
    task.check_values(values, batch, what)
    if isinstance(values, torch.Tensor) and not values.requires_grad:
        raise DisconnectedFunctionError(
            f"The {what} function's values do not depend on the selected parameters ({', '.join(task.param_names[:5])}"
            f"{', …' if len(task.param_names) > 5 else ''}), so every gradient would be zero. Compute it from the "
            "model's outputs (its first argument), and check params= selects parameters the outputs depend on."
        )
    return num_classes
