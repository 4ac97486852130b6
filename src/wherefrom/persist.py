"""Saved state: an attributor as a directory with a JSON config and safetensors tensors, checked on reload.

    att.save("fits/ekfac")                       # config.json + tensors.safetensors (+ feature files)
    att = wf.load("fits/ekfac", task)            # refuses a task with other weights, loss or parameters

``config.json`` holds the format version, the library version, the attributor's class and constructor arguments
(:mod:`wherefrom.configurable`), the task fingerprint (:func:`task_fingerprint`) and a description of the fitted
state whose tensors are in ``tensors.safetensors``. Nothing is pickled: tensors are read with safetensors and
everything else is JSON, so loading a directory never runs code from it. Functions (a loss, a target) are stored by
name; functions of the ``wherefrom`` package are found again, any other must be passed to :func:`load` by the
argument's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from wherefrom.configurable import CLASSES, Configurable, callable_name, class_key, import_callable, resolve_class
from wherefrom.errors import WherefromError

FORMAT = 1
CONFIG_FILE = "config.json"
TENSOR_FILE = "tensors.safetensors"
_EMPTY = "__empty__"


class UnresolvedCallableError(WherefromError):
    """A saved config names a function that cannot be found again; pass it to :func:`load`."""


# ---------------------------------------------------------------------------------------------- values
class TensorBag(dict):
    """The tensors of one saved document; a tensor packed twice (same storage and view) is stored once."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[tuple, str] = {}


def pack(value: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A JSON-able description of ``value``; its tensors are put in ``tensors`` under keys starting with ``prefix``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, torch.Tensor):
        seen = getattr(tensors, "seen", None)
        ident = (value.data_ptr(), value.dtype, tuple(value.shape), tuple(value.stride()), str(value.device))
        if seen is not None and value.numel() and ident in seen:  # one copy of a tensor saved twice (checkpoints)
            return {"__tensor__": seen[ident]}
        tensors[prefix] = value.detach().to("cpu").contiguous().clone()
        if seen is not None:
            seen[ident] = prefix
        return {"__tensor__": prefix}
    if isinstance(value, torch.dtype):
        return {"__dtype__": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, Configurable):
        cfg = value.config()
        return {"__config__": cfg["class"], "args": pack(cfg["args"], tensors, f"{prefix}/args")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"__dataclass__": class_key(type(value)), "fields": pack(fields, tensors, f"{prefix}/fields")}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, slice):
        return {"__slice__": [value.start, value.stop, value.step]}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) for k in value):
            return {"__dict__": {k: pack(v, tensors, f"{prefix}/{k}") for k, v in value.items()}}
        return {"__items__": [[pack(k, tensors, f"{prefix}/k{i}"), pack(v, tensors, f"{prefix}/v{i}")]
                              for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, tuple):
        return {"__tuple__": [pack(v, tensors, f"{prefix}/{i}") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [pack(v, tensors, f"{prefix}/{i}") for i, v in enumerate(value)]
    if callable(value):
        return {"__callable__": callable_name(value)}
    raise WherefromError(f"Cannot save a value of type {type(value).__name__} (at {prefix!r}).")


def unpack(desc: Any, tensors: Mapping[str, torch.Tensor], device: torch.device | str | None = None) -> Any:
    """Inverse of :func:`pack` (tensors moved to ``device`` when given)."""
    if isinstance(desc, list):
        return [unpack(v, tensors, device) for v in desc]
    if not isinstance(desc, dict):
        return desc
    if "__tensor__" in desc:
        t = tensors[desc["__tensor__"]]
        return t if device is None else t.to(device)
    if "__float__" in desc:
        return float(desc["__float__"])
    if "__dtype__" in desc:
        return getattr(torch, desc["__dtype__"])
    if "__device__" in desc:
        return torch.device(desc["__device__"])
    if "__config__" in desc:
        cls = resolve_class(desc["__config__"])
        return cls(**unpack(desc["args"], tensors, device))
    if "__dataclass__" in desc:
        return resolve_class(desc["__dataclass__"])(**unpack(desc["fields"], tensors, device))
    if "__slice__" in desc:
        return slice(*desc["__slice__"])
    if "__dict__" in desc:
        return {k: unpack(v, tensors, device) for k, v in desc["__dict__"].items()}
    if "__items__" in desc:
        return {_hashable(unpack(k, tensors, device)): unpack(v, tensors, device) for k, v in desc["__items__"]}
    if "__tuple__" in desc:
        return tuple(unpack(v, tensors, device) for v in desc["__tuple__"])
    if "__callable__" in desc:
        fn = import_callable(desc["__callable__"])
        if fn is None:
            raise UnresolvedCallableError(desc["__callable__"])
        return fn
    raise WherefromError(f"Unknown saved value {desc!r}.")


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def write_tensors(path: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` to a safetensors file atomically (through a temporary file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    tmp = f"{path}.tmp"
    payload = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    payload.setdefault(_EMPTY, torch.zeros(1))  # safetensors cannot read back a file without tensors
    save_file(payload, tmp, metadata=dict(metadata or {}))
    os.replace(tmp, path)


def read_tensors(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file."""
    with safe_open(path, framework="pt") as fh:
        # cloned into fresh (aligned) storage: BLAS may round differently on unaligned data
        tensors = {k: fh.get_tensor(k).clone() for k in fh.keys() if k != _EMPTY}  # noqa: SIM118
        return tensors, dict(fh.metadata() or {})


# ---------------------------------------------------------------------------------------------- fingerprints
def state_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """16-hex-digit content hash of a state dict (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def task_fingerprint(task: Any) -> dict[str, Any]:
    """What identifies a task: model class, selected parameters (names, shapes, dtypes), the values of the whole
    final state (parameters and buffers), weight decay and the loss and target functions (by name)."""
    shapes = task.param_shapes
    named = dict(task.model.named_parameters())
    return {
        "model": class_key(type(task.model)),
        "params": [[n, list(s), str(named[n].dtype)] for n, s in zip(task.param_names, shapes)],
        "state": state_fingerprint(task.state(None)),
        "weight_decay": task.weight_decay,
        "loss_fn": callable_name(task.loss_fn),
        "target_fn": callable_name(task.target_fn),
    }


_FINGERPRINT_HINTS = {
    "model": "the model is of another class",
    "params": "the selected parameters (names, shapes or dtypes) differ",
    "state": "the model's weights (or buffers) differ from those the attributor was fitted on",
    "weight_decay": "the weight decay differs",
    "loss_fn": "the training loss function differs",
    "target_fn": "the target function differs",
}


def check_fingerprint(saved: Mapping[str, Any], task: Any, path: str) -> None:
    """Raise :class:`WherefromError` naming every difference between a saved fingerprint and ``task``'s."""
    current = task_fingerprint(task)
    diffs = [f"{_FINGERPRINT_HINTS[k]} (saved {saved.get(k)!r}, given {current[k]!r})"
             for k in _FINGERPRINT_HINTS if saved.get(k) != current[k]]
    if diffs:
        raise WherefromError(f"The attributor saved in {path!r} was fitted on another task: " + "; ".join(diffs)
                             + ". Load it with the task (model, checkpoint, parameters, loss) it was fitted on, "
                             "or fit again.")


# ---------------------------------------------------------------------------------------------- attributors
def save_attributor(attributor: Any, path: str | os.PathLike) -> str:
    """Write ``attributor`` (fitted) to the directory ``path``; see the module docstring. Returns the path."""
    from wherefrom import __version__

    directory = os.fspath(path)
    os.makedirs(directory, exist_ok=True)
    tensors = TensorBag()
    cfg = attributor.config()
    init = {k: v for k, v in cfg["args"].items() if k != "task"}
    task = getattr(attributor, "task", None)
    fitted = attributor._fitted_state(directory)
    document = {
        "format": FORMAT,
        "wherefrom_version": __version__,
        "method": cfg["class"],
        "init": pack(init, tensors, "init"),
        "task": task_fingerprint(task) if task is not None else None,
        "fitted": pack(fitted, tensors, "fitted"),
    }
    write_tensors(os.path.join(directory, TENSOR_FILE), tensors)
    with open(os.path.join(directory, CONFIG_FILE + ".tmp"), "w") as fh:
        json.dump(document, fh, indent=1, sort_keys=True)
    os.replace(os.path.join(directory, CONFIG_FILE + ".tmp"), os.path.join(directory, CONFIG_FILE))
    return directory


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a saved attributor."""
    file = os.path.join(os.fspath(path), CONFIG_FILE)
    if not os.path.exists(file):
        raise WherefromError(f"{os.fspath(path)!r} holds no saved attributor (no {CONFIG_FILE}).")
    with open(file) as fh:
        document = json.load(fh)
    if document.get("format") != FORMAT:
        raise WherefromError(f"{os.fspath(path)!r} was saved in format {document.get('format')}, this wherefrom "
                             f"reads format {FORMAT}.")
    return document


def load(path: str | os.PathLike, task: Any = None, *, train: Any = None, **overrides: Any) -> Any:
    """Rebuild a saved attributor without refitting it.

    Args:
        path: the directory written by ``attributor.save(path)``.
        task: the :class:`~wherefrom.task.Task` the attributor was fitted on; its fingerprint (model class,
            selected parameters, weights, weight decay, loss and target functions) must match the saved one.
        train: the training data, needed only by preconditioners that solve against it at every query
            (``cg``, ``lissa``) and by methods whose training features were never stored.
        **overrides: constructor arguments to use instead of the saved ones; needed for functions that are not
            part of wherefrom (e.g. ``features_fn=`` of KNN-Shapley), which a config can only name.
    """
    directory = os.fspath(path)
    document = read_config(directory)
    tensors, _ = read_tensors(os.path.join(directory, TENSOR_FILE))
    cls = resolve_class(document["method"])
    if document["task"] is not None:
        if task is None:
            raise WherefromError(f"{directory!r} holds a {cls.__name__} fitted on a task: pass the task, "
                                 "wf.load(path, task).")
        check_fingerprint(document["task"], task, directory)
    device = getattr(task, "device", None)
    args: dict[str, Any] = {}
    for name, desc in document["init"]["__dict__"].items():
        if name in overrides:
            continue
        try:
            args[name] = unpack(desc, tensors, device)
        except UnresolvedCallableError as exc:
            raise WherefromError(f"The saved {cls.__name__} was built with {name}={exc} (a function outside "
                                 f"wherefrom): pass it again, wf.load(path, task, {name}=...).") from exc
    args.update(overrides)
    if document["task"] is not None:
        args["task"] = task
    attributor = cls(**args)
    fitted = unpack(document["fitted"], tensors, device)
    attributor._restore_fitted(fitted, directory=directory, train=train)
    return attributor


__all__ = ["CLASSES", "check_fingerprint", "load", "pack", "read_tensors", "save_attributor", "task_fingerprint",
           "unpack", "write_tensors"]
