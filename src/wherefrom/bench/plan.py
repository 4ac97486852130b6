"""Check a benchmark request before any work: method options and ensemble sizes.

Attributor constructors take hyper-parameters only and do no work, so every method can be *dry-built*: its
registered factory is called with a :class:`~wherefrom.registry.MethodContext` holding an untrained model of the
setting and placeholder checkpoints. That costs milliseconds and answers, before any training:

- **option keys**: the constructor (and the solver it builds) refuses a key it does not know, so
  ``--option if-ekfac.dampin=0.1`` fails at once, naming the key and the options the method accepts (the
  parameters of its constructor, of every base constructor it forwards ``**kwargs`` to, and of its solver's);
- **ensemble sizes**: a method that reads ``ctx.ensemble`` (TRAK-M) is dry-built with placeholder ensembles of
  growing size to find how many independently trained models it needs; with ``--ensemble-size`` unset the bench
  trains that many (cached), with a smaller ``--ensemble-size`` it stops and names the flag to pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from wherefrom.bench.settings import Setting
from wherefrom.errors import UnknownNameError, WherefromError, unknown_name
from wherefrom.registry import MethodContext, make_method, method_names

DEFAULT_ENSEMBLE = 5
MAX_ENSEMBLE = 1024  # largest ensemble the probe tries


class EnsembleSizeError(WherefromError):
    """A method needs more independently trained models than ``--ensemble-size`` offers."""


@dataclass
class MethodPlan:
    """What the runner builds for one method: its effective options and the ensemble it is offered.

    ``ensemble_size`` is ``None`` for a method that does not read ``ctx.ensemble``.
    """

    name: str
    options: dict[str, Any]
    ensemble_size: int | None


class _Placeholders(Sequence):
    """``n`` copies of one state, recording whether anyone looked at them."""

    def __init__(self, state: dict, n: int) -> None:
        self.state, self.n, self.touched = state, n, False

    def __len__(self) -> int:
        self.touched = True
        return self.n

    def __getitem__(self, k):
        self.touched = True
        if isinstance(k, slice):
            return [self.state] * len(range(*k.indices(self.n)))
        if not -self.n <= k < self.n:
            raise IndexError(k)
        return self.state

    def __iter__(self):
        self.touched = True
        return iter([self.state] * self.n)


class _DryRun:
    """Dry builds of methods on an untrained model of ``setting``."""

    def __init__(self, setting: Setting, target_fn=None, seed: int = 0) -> None:
        self.task = setting.make_task(None, target_fn=target_fn)
        self.state = {k: v.detach() for k, v in self.task.model.state_dict().items()}
        self.epochs = max(1, setting.recipe.epochs)
        self.lr = setting.recipe.lr
        self.last_layer = setting.last_layer
        self.seed = seed
        self.recorded_run = _placeholder_run if setting.recipe.kind in ("sgd", "trajectory") else None

    def build(self, name: str, options: dict[str, Any], ensemble: int) -> tuple[Any, bool]:
        """``(attributor, read_the_ensemble)``; raises what the factory or constructor raises."""
        members = _Placeholders(self.state, ensemble)
        model = self.task.model

        def features_fn(batch):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            return model.features(x)

        ctx = MethodContext(task=self.task, trajectory=[self.state] * self.epochs,
                            learning_rates=[self.lr] * self.epochs, ensemble=members, features_fn=features_fn,
                            last_layer=self.last_layer, options=dict(options), seed=self.seed,
                            recorded_run=None if self.recorded_run is None else lambda: self.recorded_run(model))
        return make_method(name, ctx), members.touched


def _placeholder_run(model: Any) -> Any:
    """A one-step recorded run of a copy of ``model`` (zero gradients): what trajectory methods are dry-built on."""
    import copy

    import torch

    from wherefrom.trajectory import TrajectoryRecorder

    clone = copy.deepcopy(model).eval()
    optimizer = torch.optim.SGD(clone.parameters(), lr=0.0)
    for p in clone.parameters():
        p.grad = torch.zeros_like(p)
    recorder = TrajectoryRecorder(clone, optimizer)
    recorder.record([0])
    optimizer.step()
    return recorder.close()


def accepted_options(attributor: Any) -> list[str]:
    """Keyword arguments a method accepts: its constructor's, those of the bases it forwards ``**kwargs`` to, and
    its solver's (when it has one)."""
    names: list[str] = []

    def collect(cls: type) -> None:
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is None:
                continue
            params = inspect.signature(init).parameters.values()
            for p in params:
                if p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("self", "task"):
                    continue
                if p.name not in names:
                    names.append(p.name)
            if not any(p.kind == p.VAR_KEYWORD for p in params):
                break

    collect(type(attributor))
    solver = getattr(attributor, "solver", None)
    if solver is not None and not isinstance(solver, str):
        collect(type(solver))
    return sorted(names)


def plan_methods(setting: Setting, names: Sequence[str], options: dict[str, dict] | None = None,
                 ensemble_size: int | None = None, target_fn=None, seed: int = 0) -> list[MethodPlan]:
    """Validate ``options`` and find each method's ensemble size, without training anything.

    Args:
        setting: the benchmark setting (its ``method_options`` are the defaults under ``options``).
        names: the methods to run.
        options: ``{method: {key: value}}`` given by the user (``--option method.key=value``).
        ensemble_size: ``--ensemble-size``; ``None`` = as many models as the methods need (at least 5).
    Raises:
        UnknownNameError: an option names a method that does not exist, or a key the method does not accept.
        WherefromError: an option names a method that is not run.
        EnsembleSizeError: a method needs more models than an explicit ``ensemble_size``.
        WherefromError: a method cannot be built with these options (the message says why).
    """
    options = options or {}
    known = method_names()
    for method in options:
        if method not in known:
            raise unknown_name("method in --option", method, known)
        if method not in names:
            raise WherefromError(f"--option {method}.{next(iter(options[method]), '')}=... is for {method!r}, "
                                 f"which this run does not include (methods: {', '.join(names)}); add it to "
                                 "--methods or drop the option.")
    if ensemble_size is not None and ensemble_size < 1:
        raise WherefromError(f"--ensemble-size must be at least 1, got {ensemble_size}.")
    dry = _DryRun(setting, target_fn, seed)
    plans = []
    for name in names:
        user = dict(options.get(name, {}))
        opts = {**setting.method_options.get(name, {}), **user}
        _check_options(dry, name, setting, user, opts)
        plans.append(MethodPlan(name, opts, _ensemble_size(dry, name, opts, ensemble_size)))
    return plans


def _check_options(dry: _DryRun, name: str, setting: Setting, user: dict, opts: dict) -> None:
    try:
        dry.build(name, opts, MAX_ENSEMBLE)
        return
    except Exception as exc:  # find which --option is to blame
        error = exc
    defaults = setting.method_options.get(name, {})
    try:
        base, _ = dry.build(name, defaults, MAX_ENSEMBLE)
    except Exception as exc:
        raise WherefromError(f"Method {name!r} cannot be built on setting {setting.name!r}: "
                             f"{type(exc).__name__}: {exc}") from exc
    valid = accepted_options(base)
    for key, value in user.items():
        try:
            dry.build(name, {**defaults, key: value}, MAX_ENSEMBLE)
        except Exception as exc:
            if key not in valid:
                raise UnknownNameError(
                    f"--option {name}.{key}={value}: {name} has no option {key!r}. Options {name} accepts: "
                    f"{', '.join(valid)}.") from exc
            raise WherefromError(f"--option {name}.{key}={value} is refused by {name}: {exc}") from exc
    raise WherefromError(f"Method {name!r} cannot be built with options {opts}: "
                         f"{type(error).__name__}: {error}") from error


def _ensemble_size(dry: _DryRun, name: str, opts: dict, requested: int | None) -> int | None:
    """The ensemble size to offer ``name``: ``requested`` (or 5) unless it needs more (``None``: never read)."""
    offer = requested if requested is not None else DEFAULT_ENSEMBLE
    try:
        _, touched = dry.build(name, opts, offer)
        return offer if touched else None
    except Exception as exc:
        first_error = exc
    need = _smallest_working_size(dry, name, opts, offer)
    if need is None:
        raise WherefromError(f"Method {name!r} cannot be built with an ensemble of up to {MAX_ENSEMBLE} models: "
                             f"{first_error}") from first_error
    if requested is not None:
        raise EnsembleSizeError(
            f"{name} needs {need} independently trained models but --ensemble-size is {requested}: pass "
            f"--ensemble-size {need} (or leave --ensemble-size unset and the bench trains the {need} models it "
            f"needs, cached).")
    return need


def _smallest_working_size(dry: _DryRun, name: str, opts: dict, failed: int) -> int | None:
    """Smallest ensemble size in ``(failed, MAX_ENSEMBLE]`` whose dry build succeeds (doubling, then bisection)."""

    def works(n: int) -> bool:
        try:
            dry.build(name, opts, n)
            return True
        except Exception:
            return False

    lo, hi = failed, failed
    while True:
        hi = min(MAX_ENSEMBLE, max(2 * hi, hi + 1))
        if works(hi):
            break
        if hi >= MAX_ENSEMBLE:
            return None
        lo = hi
    while hi - lo > 1:  # works(hi), not works(lo)
        mid = (lo + hi) // 2
        if works(mid):
            hi = mid
        else:
            lo = mid
    return hi
