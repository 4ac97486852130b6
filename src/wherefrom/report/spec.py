"""The spec protocol of ``wherefrom attribute``: where the model and the data come from.

A spec is a Python file or an importable module with a function that returns a :class:`Spec` (or a dict of its
fields, or a tuple ``(model, train, test)``):

    # my_spec.py  →  wherefrom attribute my_spec.py --method ekfac
    import torch, wherefrom.report as wr
    def spec():
        model = MyNet(); model.load_state_dict(torch.load("model.pt"))
        return wr.Spec(model=model, train=train_dataset, test=test_dataset, class_names=["cat", "dog"])

SPEC forms: ``path/to/file.py`` (the function ``spec``), ``path/to/file.py:make`` (the function ``make``),
``package.module:make``, or ``file.toml`` (a ``spec = "..."`` line naming one of the others, a ``[kwargs]`` table
passed to the function, and plain-data fields such as ``class_names`` or ``name`` that override the returned ones).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from wherefrom.report.errors import SpecFailedError, SpecInvalidError, SpecNotFoundError

INPUT_KINDS = ("auto", "image", "tokens", "tabular", "index")
DEFAULT_FUNCTION = "spec"
#: fields a TOML spec may set directly (plain data, no code).
TOML_FIELDS = ("name", "class_names", "input_kind", "feature_names", "vocabulary", "weight_decay", "params")


@dataclass
class Spec:
    """The model and data to attribute, and how to show them.

    Required:
        model: the trained ``nn.Module`` (its current weights are explained).
        train: the training data in training order (Dataset, unshuffled DataLoader or tuple of tensors).
        test: the data whose predictions are explained (``--test`` selects examples of it by index).

    Optional, what is attributed (as in :class:`wherefrom.Task`):
        loss_fn: ``loss_fn(outputs, batch) -> Tensor[B]`` per-example training loss (default cross-entropy).
        target_fn: ``target_fn(outputs, batch) -> Tensor[B]`` explained quantity (default: the loss).
        weight_decay: L2 coefficient of the training objective.  params: parameter names / module prefixes.
        input_fn: ``input_fn(batch) -> model inputs`` (default ``batch[0]``).
        checkpoints, learning_rates: the training trajectory (oldest first) for trajectory methods (``tracin``).
        ensemble: independently trained state_dicts for ensemble methods (``trak``).
        trajectory: the recorded training run for ``hydra`` (a :class:`~wherefrom.trajectory.Trajectory` from
            :class:`~wherefrom.trajectory.TrajectoryRecorder`, or the path of a saved one).

    Optional, how examples are shown in the report:
        name: the report's title.  class_names: ``class_names[y]`` is shown for label ``y``.
        input_kind: ``"auto"`` (default), ``"image"``, ``"tokens"``, ``"tabular"`` or ``"index"``.
        denormalize: ``denormalize(x [C, H, W]) -> image`` in ``[0, 1]`` (or ``[0, 255]``) for display.
        vocabulary: token strings by id (a list, or a dict ``token -> id``).  decode: ``decode([ids]) -> str``.
        feature_names: column names of tabular rows.
    """

    model: nn.Module
    train: Any
    test: Any
    loss_fn: Callable | None = None
    target_fn: Callable | None = None
    weight_decay: float = 0.0
    params: Sequence[str] | None = None
    input_fn: Callable | None = None
    checkpoints: Sequence[Any] | None = None
    learning_rates: Sequence[float] | None = None
    ensemble: Sequence[Any] | None = None
    trajectory: Any = None
    name: str | None = None
    class_names: Sequence[str] | None = None
    input_kind: str = "auto"
    denormalize: Callable[[torch.Tensor], Any] | None = None
    vocabulary: Sequence[str] | Mapping[str, int] | None = None
    decode: Callable[[list[int]], str] | None = None
    feature_names: Sequence[str] | None = None


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(Spec))


# ---------------------------------------------------------------------------------------------- validation
def _is_data(x: Any) -> bool:
    if isinstance(x, (Dataset, DataLoader)):
        return True
    return isinstance(x, (tuple, list)) and bool(x) and all(isinstance(t, torch.Tensor) for t in x)


def validate_spec(spec: Spec, where: str) -> Spec:
    """Check the field types of ``spec`` and return it; raise :class:`SpecInvalidError` naming the bad field."""

    def bad(field: str, expected: str, got: Any) -> SpecInvalidError:
        return SpecInvalidError(f"The spec {where} has {field} of type {type(got).__name__}; expected {expected}.")

    if not isinstance(spec.model, nn.Module):
        raise bad("model", "a torch.nn.Module", spec.model)
    for field in ("train", "test"):
        value = getattr(spec, field)
        if not _is_data(value):
            raise bad(field, "a torch Dataset, an unshuffled DataLoader or a tuple of tensors", value)
    for field in ("loss_fn", "target_fn", "input_fn", "denormalize", "decode"):
        value = getattr(spec, field)
        if value is not None and not callable(value):
            raise bad(field, "a function", value)
    for field in ("class_names", "feature_names"):
        value = getattr(spec, field)
        if value is not None:
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                raise bad(field, "a list of strings", value)
            setattr(spec, field, [str(v) for v in value])
    if spec.vocabulary is not None and not isinstance(spec.vocabulary, (Sequence, Mapping)):
        raise bad("vocabulary", "a list of token strings or a dict token -> id", spec.vocabulary)
    if spec.trajectory is not None:
        from wherefrom.trajectory import Trajectory

        if isinstance(spec.trajectory, (str, os.PathLike)):
            try:
                spec.trajectory = Trajectory.load(spec.trajectory)
            except Exception as exc:
                raise SpecInvalidError(f"The spec {where} has trajectory={os.fspath(spec.trajectory)!r}, which "
                                       f"cannot be opened as a recorded run: {exc}") from exc
        elif not isinstance(spec.trajectory, Trajectory):
            raise bad("trajectory", "a wherefrom Trajectory (recorder.trajectory) or the path of a saved one",
                      spec.trajectory)
    if spec.input_kind not in INPUT_KINDS:
        raise SpecInvalidError(f"The spec {where} has input_kind={spec.input_kind!r}; choose one of "
                               f"{', '.join(INPUT_KINDS)}.")
    if spec.name is not None:
        spec.name = str(spec.name)
    return spec


def coerce_spec(value: Any, where: str) -> Spec:
    """Turn what a spec function returned (a :class:`Spec`, a dict of its fields, a tuple) into a checked Spec."""
    if isinstance(value, Spec):
        return validate_spec(value, where)
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in FIELD_NAMES]
        if unknown:
            raise SpecInvalidError(f"The spec {where} returned a dict with unknown keys {unknown}; the keys are the "
                                   f"fields of wherefrom.report.Spec: {', '.join(FIELD_NAMES)}.")
        missing = [k for k in ("model", "train", "test") if k not in value]
        if missing:
            raise SpecInvalidError(f"The spec {where} returned a dict without {', '.join(missing)}.")
        return validate_spec(Spec(**value), where)
    if isinstance(value, tuple) and 3 <= len(value) <= len(FIELD_NAMES):
        return validate_spec(Spec(*value), where)
    raise SpecInvalidError(
        f"The spec {where} returned {type(value).__name__}; it must return a wherefrom.report.Spec, a dict of its "
        "fields, or a tuple (model, train, test)."
    )


# ---------------------------------------------------------------------------------------------- loading
def _failure(exc: BaseException, what: str, path: str | None) -> SpecFailedError:
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [f for f in frames if path is not None and os.path.abspath(f.filename) == path] or frames[-1:]
    at = f" (at {mine[-1].filename}:{mine[-1].lineno})" if mine else ""
    return SpecFailedError(f"{what} raised {type(exc).__name__}: {exc}{at}. Fix the spec and run again.")


@contextlib.contextmanager
def _on_path(folder: str):
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def _import_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise SpecNotFoundError(f"Spec file {path!r} does not exist. Give a Python file, a TOML file or "
                                "package.module:function.")
    path = os.path.abspath(path)
    name = "wherefrom_spec_" + os.path.splitext(os.path.basename(path))[0].replace("-", "_")
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise SpecNotFoundError(f"Spec file {path!r} is not a Python file (use a .py or .toml file).")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[name] = module
    try:
        with _on_path(os.path.dirname(path)):
            loader_spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise _failure(exc, f"Importing the spec file {path!r}", path) from exc
    return module


def _import_module(name: str) -> Any:
    try:
        with _on_path(os.getcwd()):
            return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise SpecNotFoundError(f"Spec module {name!r} cannot be found (no module named {exc.name!r}). Give a "
                                    "file path ending in .py, or a module importable from here.") from exc
        raise _failure(exc, f"Importing the spec module {name!r}", None) from exc
    except Exception as exc:
        raise _failure(exc, f"Importing the spec module {name!r}", None) from exc


def _split(source: str) -> tuple[str, str | None]:
    head, sep, func = source.rpartition(":")
    if sep and func and (os.sep not in func) and not (len(head) == 1 and head.isalpha()):  # keep C:\ paths whole
        return head, func
    return source, None


def _resolve(source: str, kwargs: Mapping[str, Any]) -> tuple[Any, str, str | None]:
    """Call the spec function named by ``source``; return (its result, description, the file path or None)."""
    target, func = _split(source)
    if target.endswith(".py") or os.sep in target or os.path.isfile(target):
        module, path = _import_file(target), os.path.abspath(target)
    else:
        module, path = _import_module(target), None
    fname = func or DEFAULT_FUNCTION
    where = f"{target}:{fname}"
    if not hasattr(module, fname):
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise SpecNotFoundError(f"The spec {target!r} has no function {fname!r}. Name one with {target}:FUNCTION "
                                f"(functions found: {', '.join(public) or 'none'}).")
    obj = getattr(module, fname)
    if not callable(obj) or isinstance(obj, Spec):
        if kwargs:
            raise SpecInvalidError(f"{where} is not a function, so the TOML [kwargs] cannot be passed to it.")
        return obj, where, path
    try:
        return obj(**kwargs), where, path
    except Exception as exc:
        raise _failure(exc, f"The spec function {where}", path) from exc


def _read_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError as exc:
            raise SpecInvalidError("TOML specs need Python 3.11+ or `pip install tomli`.") from exc
    if not os.path.isfile(path):
        raise SpecNotFoundError(f"Spec file {path!r} does not exist.")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecInvalidError(f"The TOML spec {path!r} is not valid TOML: {exc}.") from exc
    unknown = [k for k in data if k not in ("spec", "kwargs", *TOML_FIELDS)]
    if unknown or not isinstance(data.get("spec"), str):
        raise SpecInvalidError(
            f"The TOML spec {path!r} must have a `spec = \"file.py:function\"` line, an optional [kwargs] table and "
            f"optional fields {', '.join(TOML_FIELDS)}" + (f"; unknown keys: {unknown}." if unknown else ".")
        )
    return data


def load_spec(source: str) -> Spec:
    """Load a spec from ``file.py[:function]``, ``package.module:function`` or ``file.toml`` (see module doc)."""
    if source.endswith(".toml"):
        data = _read_toml(source)
        inner = data["spec"]
        target, func = _split(inner)
        if not os.path.isabs(target) and (target.endswith(".py") or os.sep in target):
            inner = os.path.join(os.path.dirname(os.path.abspath(source)), target) + (f":{func}" if func else "")
        value, where, _ = _resolve(inner, data.get("kwargs", {}))
        spec = coerce_spec(value, where)
        for key in TOML_FIELDS:
            if key in data:
                setattr(spec, key, data[key])
        return validate_spec(spec, source)
    value, where, _ = _resolve(source, {})
    return coerce_spec(value, where)
