"""``Task``: the model, what it was trained on (loss), what is explained (target), which parameters, which checkpoints.

Everything downstream evaluates the model *functionally* (``torch.func.functional_call``) at a flat parameter
vector ``θ ∈ R^p`` made of the selected parameters in ``named_parameters()`` order, each flattened row-major. The
other parameters and the buffers are held fixed at the checkpoint's values.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from wherefrom import targets
from wherefrom.data.loaders import batch_length, move_batch
from wherefrom.errors import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    DeviceError,
    LossReductionError,
    ParameterSelectionError,
    WherefromError,
)
from wherefrom.warn import warn

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
Checkpoint = Mapping[str, torch.Tensor] | str | os.PathLike

_STOCHASTIC_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def default_input_fn(batch: Any) -> Any:
    """Model inputs of a batch: its first element for ``(inputs, labels, ...)``, the tensor itself, or for a dict
    batch (Hugging Face style: ``input_ids``, ``attention_mask``, ``labels``, ...) every entry except ``labels``,
    passed to the model as keywords (so the model does not compute its own batch-mean loss)."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, dict):
        return {k: v for k, v in batch.items() if k != "labels"}
    return batch[0]


def default_output_fn(outputs: Any) -> Any:
    """What the loss and target functions receive: the ``logits`` of a Hugging Face ``ModelOutput`` (any object
    with a ``logits`` attribute, or a dict with a ``"logits"`` entry), otherwise the model's outputs unchanged.

    A Hugging Face model's ``.loss`` is a mean over the batch, not one value per example, so wherefrom computes
    per-example losses from the logits (see :mod:`wherefrom.targets`). Pass ``output_fn=lambda out: out`` to a
    :class:`Task` to give ``loss_fn`` the whole output object.
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping) and "logits" in outputs:
        return outputs["logits"]
    logits = getattr(outputs, "logits", None)
    return outputs if logits is None else logits


def tied_parameter_names(model: nn.Module) -> dict[str, str]:
    """``{alias: name}`` for parameters registered under several names (tied weights, e.g. GPT-2's ``lm_head.weight``
    and ``transformer.wte.weight``): ``name`` is the one ``named_parameters()`` lists (the first), the aliases are
    the others."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


class Task:
    """What is attributed: a model, its per-example training loss, the explained target, parameters, checkpoints.

    Args:
        model: the trained ``nn.Module``.
        loss_fn: ``loss_fn(outputs, batch) -> Tensor[B]``, the per-example training loss ``ℓ``. Default:
            cross-entropy of ``outputs`` against ``batch[1]``.
        target_fn: ``target_fn(outputs, batch) -> Tensor[B]``, what is explained on test points ``f``. Default:
            the loss. ``wherefrom.targets.margin`` (higher is better) is provided too.
        params: which parameters are attributed: ``None`` for every parameter with ``requires_grad``, or a list
            of parameter names and module prefixes (``["fc2"]`` selects ``fc2.weight`` and ``fc2.bias``).
        weight_decay: ``wd`` of the L2 term ``(wd/2)·‖θ‖²`` of the training objective; it enters the Hessian.
        checkpoints: state_dicts or paths to them (read with ``weights_only=True``), oldest first. Methods that
            need one trained model use the last one; without checkpoints the model's current state is used.
        input_fn: ``input_fn(batch) -> inputs`` for the model (a tuple is unpacked, a dict passed as keywords).
            Default (:func:`default_input_fn`): ``batch[0]``; for a dict batch every entry except ``"labels"``.
        output_fn: ``output_fn(model_outputs) -> outputs`` given to ``loss_fn`` / ``target_fn`` (and to every
            curvature computed on outputs). Default (:func:`default_output_fn`): the ``.logits`` of a Hugging Face
            ``ModelOutput``, otherwise the outputs unchanged.

    Tied parameters (one ``nn.Parameter`` registered under several names) are one parameter, under the name
    ``named_parameters()`` gives it; its per-example gradient sums every use.

    The training objective is ``R(θ) = (1/n) Σ_i ℓ(z_i; θ) + (wd/2)‖θ‖²`` over the selected parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn | None = None,
        target_fn: LossFn | None = None,
        params: Sequence[str] | str | None = None,
        weight_decay: float = 0.0,
        checkpoints: Sequence[Checkpoint] | None = None,
        input_fn: Callable[[Any], Any] | None = None,
        output_fn: Callable[[Any], Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise WherefromError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if weight_decay < 0:
            raise WherefromError(f"weight_decay must be >= 0, got {weight_decay}.")
        self.model = model
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else targets.cross_entropy
        self.target_fn: LossFn = target_fn if target_fn is not None else self.loss_fn
        self.weight_decay = float(weight_decay)
        self.checkpoints: list[Checkpoint] = list(checkpoints) if checkpoints is not None else []
        for k, ck in enumerate(self.checkpoints):
            if isinstance(ck, (str, os.PathLike)) and not os.path.exists(ck):
                raise CheckpointNotFoundError(
                    f"checkpoints[{k}] = {os.fspath(ck)!r} does not exist. Pass the paths of files written with "
                    "torch.save(model.state_dict(), path), or the state_dicts themselves."
                )
        self.input_fn = input_fn if input_fn is not None else default_input_fn
        self.output_fn = output_fn if output_fn is not None else default_output_fn
        #: ``{alias: parameter name}`` of tied parameters (see :func:`tied_parameter_names`).
        self.tied: dict[str, str] = tied_parameter_names(model)
        self.param_names: list[str] = self._select_params(params)
        #: names of modules kept in training mode during attribution (dropout ensembles); see ``attribution_mode``.
        self.train_mode_modules: tuple[str, ...] = ()
        #: ``randomness`` passed to ``torch.func.vmap`` (matters only for modules left in training mode).
        self.vmap_randomness: str = "different"

    # ------------------------------------------------------------------ parameters
    def _select_params(self, params: Sequence[str] | str | None) -> list[str]:
        named = dict(self.model.named_parameters())
        if not named:
            raise ParameterSelectionError(
                f"The model ({type(self.model).__name__}) has no parameters, so there is nothing to attribute "
                "through. Pass the trained model itself."
            )
        if params is None:
            names = [n for n, p in named.items() if p.requires_grad]
            if not names:
                raise ParameterSelectionError(
                    "No parameters selected: every parameter of the model has requires_grad=False. Pass "
                    "params=[...] (names or module prefixes, e.g. params=['fc2']) or call "
                    "p.requires_grad_(True) on the parameters to attribute."
                )
        else:
            wanted = [params] if isinstance(params, str) else list(params)
            if not wanted:
                raise ParameterSelectionError(
                    "params=[] selects no parameter. Pass None (every parameter with requires_grad) or names / "
                    f"module prefixes among: {', '.join(list(named)[:20])}."
                )
            names = []
            for w in wanted:
                w = self.tied.get(w, w) if isinstance(w, str) else w
                hits = [n for n in named if n == w or n.startswith(w + ".")] if isinstance(w, str) else []
                if not hits:
                    raise ParameterSelectionError(
                        f"params entry {w!r} matches no parameter or module of the model. "
                        f"Parameters are: {', '.join(named)}."
                    )
                names.extend(h for h in hits if h not in names)
            names = [n for n in named if n in names]  # keep model order
        _check_devices({n: named[n] for n in names})
        return names

    @property
    def param_shapes(self) -> list[torch.Size]:
        """Shapes of the selected parameters, in order."""
        named = dict(self.model.named_parameters())
        return [named[n].shape for n in self.param_names]

    @property
    def num_params(self) -> int:
        """``p``: the number of selected scalar parameters."""
        return sum(s.numel() for s in self.param_shapes)

    @property
    def device(self) -> torch.device:
        """Device of the model's (first selected) parameters."""
        return dict(self.model.named_parameters())[self.param_names[0]].device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model's (first selected) parameters; floating inputs are cast to it."""
        return dict(self.model.named_parameters())[self.param_names[0]].dtype

    def restrict(self, params: Sequence[str] | str) -> Task:
        """The same task (model, loss, target, weight decay, checkpoints, inputs) with other selected parameters."""
        view = Task(self.model, loss_fn=self.loss_fn, target_fn=self.target_fn, params=params,
                    weight_decay=self.weight_decay, checkpoints=self.checkpoints, input_fn=self.input_fn,
                    output_fn=self.output_fn)
        view.train_mode_modules = self.train_mode_modules
        view.vmap_randomness = self.vmap_randomness
        return view

    def param_slices(self) -> dict[str, slice]:
        """Where each selected parameter lies in the flat vector ``θ``."""
        out, start = {}, 0
        for name, shape in zip(self.param_names, self.param_shapes):
            out[name] = slice(start, start + shape.numel())
            start += shape.numel()
        return out

    def flat_params(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``θ``: the selected parameters of ``state`` flattened and concatenated, ``[p]``."""
        return torch.cat([state[n].detach().reshape(-1) for n in self.param_names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat ``[p]`` vector into ``{name: tensor}`` with the selected parameters' shapes."""
        out, start = {}, 0
        for name, shape in zip(self.param_names, self.param_shapes):
            size = shape.numel()
            out[name] = flat[start : start + size].view(shape)
            start += size
        return out

    # ------------------------------------------------------------------ checkpoints
    def state(self, checkpoint: Checkpoint | int | None = None) -> dict[str, torch.Tensor]:
        """Full state (parameters and buffers, detached) of the model at ``checkpoint``.

        ``checkpoint`` may be ``None`` (the last of ``self.checkpoints``, or the model's current state), an index
        into ``self.checkpoints``, a state_dict or a path. A checkpoint that does not fit the model raises
        :class:`CheckpointMismatchError`.
        """
        if checkpoint is None:
            checkpoint = self.checkpoints[-1] if self.checkpoints else None
        elif isinstance(checkpoint, int):
            if not -len(self.checkpoints) <= checkpoint < len(self.checkpoints):
                raise WherefromError(f"Checkpoint index {checkpoint} is out of range: the task has "
                                     f"{len(self.checkpoints)} checkpoints.")
            checkpoint = self.checkpoints[checkpoint]
        current = {k: v.detach() for k, v in self.model.state_dict(keep_vars=False).items()}
        if checkpoint is None:
            return current
        loaded = load_checkpoint(checkpoint, map_location=self.device)
        check_checkpoint(loaded, current)
        return {k: loaded[k].detach().to(device=current[k].device, dtype=current[k].dtype) for k in current}

    # ------------------------------------------------------------------ evaluation
    @property
    def target_sign(self) -> float:
        """``+1`` for a loss-like target, ``−1`` for a higher-is-better one (so that positive = helpful)."""
        return -1.0 if targets.is_goodness(self.target_fn) else 1.0

    def prepare_batch(self, batch: Any) -> Any:
        """Move a batch to the model's device and cast floating tensors to the model's dtype."""
        return move_batch(batch, self.device, self.dtype)

    def outputs(self, flat: torch.Tensor, state: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """Model outputs on ``batch`` with the selected parameters set to the flat vector ``flat``, passed through
        ``output_fn`` (the logits of a Hugging Face model)."""
        return self.call_model({**state, **self.unflatten(flat)}, batch)

    def call_model(self, params: Mapping[str, torch.Tensor], batch: Any) -> torch.Tensor:
        """Model outputs on ``batch`` with every parameter and buffer taken from ``params`` (a full state), passed
        through ``output_fn``. ``input_fn(batch)`` may give a tuple (positional), a dict (keywords) or one tensor."""
        merged = {k: v for k, v in params.items() if k not in self.tied}  # an alias follows its parameter
        inputs = self.input_fn(batch)
        if isinstance(inputs, tuple):
            out = functional_call(self.model, merged, inputs)
        elif isinstance(inputs, dict):
            out = functional_call(self.model, merged, (), inputs)
        else:
            out = functional_call(self.model, merged, (inputs,))
        return self.output_fn(out)

    def per_example(
        self, fn: LossFn, flat: torch.Tensor, state: Mapping[str, torch.Tensor], batch: Any
    ) -> torch.Tensor:
        """``fn`` (loss or target) of each example of ``batch``, ``[B]``."""
        return fn(self.outputs(flat, state, batch), batch)

    def check_per_example(self, fn: LossFn, state: Mapping[str, torch.Tensor], batch: Any, what: str) -> None:
        """Raise :class:`LossReductionError` unless ``fn`` returns one finite-shaped value per example."""
        with torch.no_grad():
            values = self.per_example(fn, self.flat_params(state), state, batch)
        self.check_values(values, batch, what)

    def check_values(self, values: Any, batch: Any, what: str) -> None:
        """Raise :class:`LossReductionError` unless ``values`` holds one value per example of ``batch``."""
        size = batch_length(batch)
        if not isinstance(values, torch.Tensor) or values.shape != (size,):
            shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
            raise LossReductionError(
                f"The {what} function must return one value per example (shape [{size}] for this batch) but "
                f"returned shape {shape}. Compute it with reduction='none', e.g. "
                "F.cross_entropy(outputs, batch[1], reduction='none')."
            )

    @contextlib.contextmanager
    def attribution_mode(self) -> Iterator[None]:
        """Run the model in eval mode, warning if dropout or batch-norm layers were left in training mode.

        Modules named in ``self.train_mode_modules`` (a deliberate dropout ensemble) stay in training mode.
        The previous mode of every module is restored on exit.
        """
        modes = {name: m.training for name, m in self.model.named_modules()}
        keep = set(self.train_mode_modules)
        offending = [
            n for n, m in self.model.named_modules()
            if isinstance(m, _STOCHASTIC_LAYERS) and m.training and n not in keep
        ]
        if offending:
            warn(f"Layers {offending[:5]} were in training mode; attribution runs the model in eval mode "
                 "(dropout off, batch-norm running statistics). Call model.eval() to silence this warning.",
                 owner=self)
        self.model.eval()
        for name, m in self.model.named_modules():
            if name in keep:
                m.train()
        try:
            yield
        finally:
            for name, m in self.model.named_modules():
                m.training = modes[name]


def _check_devices(params: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`DeviceError` if the selected parameters are on ``meta`` or spread over several devices."""
    meta = [n for n, p in params.items() if p.device.type == "meta"]
    if meta:
        raise DeviceError(
            f"Parameters {meta[:5]} are on the 'meta' device (not materialised). Load the trained weights first "
            "(e.g. model.to_empty(device=...) then model.load_state_dict(...))."
        )
    devices: dict[str, str] = {}
    for n, p in params.items():
        devices.setdefault(str(p.device), n)
    if len(devices) > 1:
        found = ", ".join(f"{n} on {d}" for d, n in devices.items())
        raise DeviceError(
            f"The selected parameters are on several devices ({found}). wherefrom needs them on one device: "
            "move the model with model.to(device), or select one device's parameters with params=[...]."
        )


def load_checkpoint(checkpoint: Checkpoint, map_location: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Read a checkpoint: a state_dict, or a path to one saved with ``torch.save`` (read with weights_only=True)."""
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.exists(checkpoint):
            raise CheckpointNotFoundError(f"Checkpoint file {os.fspath(checkpoint)!r} does not exist. Pass the path "
                                          "of a file written with torch.save(model.state_dict(), path).")
        loaded = torch.load(checkpoint, map_location=map_location, weights_only=True)
    else:
        loaded = checkpoint
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    if not isinstance(loaded, Mapping):
        raise CheckpointMismatchError(
            f"A checkpoint must be a state_dict (a mapping of names to tensors), got {type(loaded).__name__}."
        )
    return dict(loaded)


def check_checkpoint(loaded: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``loaded`` has exactly the keys and shapes of ``reference``."""
    missing = [k for k in reference if k not in loaded]
    unexpected = [k for k in loaded if k not in reference]
    wrong = [
        f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(reference[k].shape)}"
        for k in reference
        if k in loaded and tuple(loaded[k].shape) != tuple(reference[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:5]}")
        if wrong:
            parts.append(f"shape mismatches {wrong[:5]}")
        raise CheckpointMismatchError(
            "The checkpoint does not match the model: " + "; ".join(parts)
            + ". Pass checkpoints saved from this model's architecture (model.state_dict())."
        )
