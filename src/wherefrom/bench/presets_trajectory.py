"""Benchmark presets of the trajectory methods (HYDRA), registered like those of :mod:`wherefrom.bench.presets`.

- ``hydra``: exact HYDRA (the Hessian of every step's batch loss at its pre-step parameters), reverse engine:
  every training example, one adjoint per test target, ``targets_per_pass=128`` targets per pass;
- ``hydra-approx``: the Hessian-free approximation, reverse engine;
- ``hydra-lean``: the Hessian-free approximation, lean engine (two scalars per example and target; SGD runs).

They attribute the setting's reference run recorded step by step (``ctx.recorded_run()``): settings whose reference
model is the end of a minibatch run (``sgd`` and ``trajectory`` recipes) provide it; the others raise.
``ctx.options`` are passed to :class:`~wherefrom.methods.hydra.HYDRA` and override these defaults.
"""

from __future__ import annotations

from typing import Any

from wherefrom.bench.presets import Preset
from wherefrom.errors import WherefromError
from wherefrom.methods.hydra import HYDRA
from wherefrom.registry import MethodContext


def _hydra(hessian: bool):
    def build(ctx: MethodContext, opts: dict[str, Any]) -> HYDRA:
        run = ctx.recorded_run() if ctx.recorded_run is not None else None
        if run is None:
            raise WherefromError("HYDRA differentiates the recorded training run, but this benchmark setting's "
                                 "reference model is not the end of a recorded minibatch run (e.g. an exact "
                                 "optimum). Use a setting with an sgd or trajectory recipe, e.g. mnist-mlp-sgd.")
        return HYDRA(ctx.task, run, hessian=hessian, **opts)

    return build


PRESETS: dict[str, Preset] = {p.name: p.register() for p in [
    Preset("hydra", "HYDRA: exact hypergradients through the recorded run (reverse engine, all examples)",
           _hydra(True), {"engine": "reverse", "targets_per_pass": 128}),
    Preset("hydra-approx", "HYDRA without the Hessian term (reverse engine, all examples)",
           _hydra(False), {"engine": "reverse", "targets_per_pass": 128}),
    Preset("hydra-lean", "HYDRA without the Hessian term, lean two-scalar accumulator (SGD runs)",
           _hydra(False), {"engine": "lean", "targets_per_pass": 128}),
]}
