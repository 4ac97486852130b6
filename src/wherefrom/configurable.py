"""Objects described by the arguments they were built with: the basis of configs, cache keys and saved state.

A :class:`Configurable` subclass records the arguments of the outermost constructor call (``self._init_args``,
bound to the constructor's parameter names). :meth:`Configurable.config` returns them with the class's registered
name, and :func:`build` rebuilds an equal object from such a config. Every component of an attributor (gradient
source, preconditioner, similarity, projection) and every attributor is configurable, so that

- a saved attributor is a JSON config plus tensors (:mod:`wherefrom.persist`), rebuilt without pickling code;
- cache keys come from configs (:func:`config_key`), never from a ``repr``.

Classes register themselves by ``"module:QualName"`` when they are defined; :func:`build` also imports a class of
the ``wherefrom`` package by name. Classes defined elsewhere must be imported before a config naming them is built.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
from typing import Any

import torch

from wherefrom.errors import WherefromError

CLASSES: dict[str, type] = {}


def class_key(cls: type) -> str:
    """``"module:QualName"`` of a class: how configs name it."""
    return f"{cls.__module__}:{cls.__qualname__}"


def resolve_class(key: str) -> type:
    """The class registered as ``key``; a class of the ``wherefrom`` package is imported on demand."""
    if key not in CLASSES:
        module = key.split(":", 1)[0]
        if module == "wherefrom" or module.startswith("wherefrom."):
            importlib.import_module(module)
    if key not in CLASSES:
        raise WherefromError(f"The config names class {key!r}, which is not defined in this process. Import the "
                             "module that defines it before loading.")
    return CLASSES[key]


class Configurable:
    """Base class: remembers its constructor arguments (``_init_args``) and can be rebuilt from :meth:`config`."""

    _init_args: dict[str, Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        CLASSES[class_key(cls)] = cls
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args: Any, **kw: Any) -> None:
            if "_init_args" not in self.__dict__:  # the outermost (most derived) constructor call only
                bound = signature.bind(self, *args, **kw)
                named = dict(bound.arguments)
                named.pop(next(iter(signature.parameters)))  # self
                for name, param in signature.parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD and name in named:
                        named.update(named.pop(name))
                    elif param.kind is inspect.Parameter.VAR_POSITIONAL and name in named:
                        named[name] = list(named[name])
                self.__dict__["_init_args"] = named
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[misc]

    def config(self) -> dict[str, Any]:
        """``{"class": "module:QualName", "args": {...}}``: what rebuilds an equal, unfitted object."""
        return {"class": class_key(type(self)), "args": dict(getattr(self, "_init_args", {}))}


def build(config: dict[str, Any], **overrides: Any) -> Any:
    """Rebuild an object from :meth:`Configurable.config` (``overrides`` replace or add constructor arguments)."""
    cls = resolve_class(config["class"])
    return cls(**{**config["args"], **overrides})


def _key_value(value: Any) -> Any:
    """A JSON-able stand-in of ``value`` for hashing (tensors by content, components by config)."""
    if isinstance(value, Configurable):
        return _key_value(value.config())
    if isinstance(value, torch.Tensor):
        h = hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
        return {"tensor": h, "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, dict):
        return {str(k): _key_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_key_value(v) for v in value]
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    if callable(value):
        return callable_name(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"{type(value).__module__}:{type(value).__qualname__}"


def config_key(value: Any) -> str:
    """A 16-hex-digit content hash of a config (or any value :func:`_key_value` understands)."""
    blob = json.dumps(_key_value(value), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def callable_name(fn: Any) -> str:
    """``"module:qualname"`` of a function (how configs and fingerprints name loss and target functions)."""
    fn = getattr(fn, "fn", fn)  # a Probe names its function
    module = getattr(fn, "__module__", None) or type(fn).__module__
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{name}"


def import_callable(name: str) -> Any:
    """The function ``"module:qualname"`` if it is a module-level function of the ``wherefrom`` package, else None."""
    module, _, qual = name.partition(":")
    if not (module == "wherefrom" or module.startswith("wherefrom.")) or "<" in qual:
        return None
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj
