"""The API of pytorch_influence_functions ("ptif" 0.1), on wherefrom's ``Task`` and ``InfluenceFunction``.

Code written for ptif runs with its import line changed::

    import wherefrom.compat.ptif as ptif

    ptif.init_logging()
    config = ptif.get_default_config()
    influences, harmful, helpful = ptif.calc_img_wise(config, model, trainloader, testloader)

What is computed. The model is a classifier trained with the mean cross-entropy (no regulariser in the Hessian,
as in ptif). ``s_test`` is ptif's LiSSA recursion, run by :class:`wherefrom.curvature.LissaSolver` for all test
points at once: ``h_0 = v``, ``recursion_depth`` steps of ``h_t = v + (1 − damp) h_{t−1} − H_t h_{t−1} / scale``
(``H_t`` the Hessian of the mean loss on a random mini-batch of the training loader's batch size), averaged
over ``r_averaging`` runs; ``s_test = h_T`` (ptif does not divide by ``scale``). Its limit is
``scale · (H + damp·scale·I)⁻¹ v``. For training example ``i`` and test example ``j``::

    influence[i] = −∇ℓ(z_i)ᵀ s_test(z_j) / n

Mapping to wherefrom (``τ`` = ``wf.InfluenceFunction(wf.Task(model), solver="lissa", damping=damp·scale,
scale=scale, depth=recursion_depth, repeats=r_averaging).score(test)``, positive = helpful)::

    influence[i] (test j) = −scale · τ[i, j]

so ptif's ``influence`` is ``I_up,loss / n`` of Koh & Liang times ``scale``: **negative = helpful**.

Differences from ptif (its known defects are not reproduced):

- the LiSSA estimate is updated at every step (ptif 0.1.1 restarted each step from the initial estimate);
- ``r_averaging > 1`` averages the runs (ptif appended the runs' tensor lists, so only the first run counted);
- each step draws a random mini-batch, seeded by ``config["seed"]`` (ptif took the first batch of the loader,
  the same batch every step when the loader does not shuffle);
- ``config["damp"]`` and ``config["scale"]`` are honoured (ptif's ``calc_img_wise`` ignored them);
- ``helpful`` lists the training examples whose removal would raise the test loss most (most negative
  ``influence`` first) and ``harmful`` the opposite; ptif sorted them the other way round, so its "helpful"
  list held the most harmful examples;
- the result is returned (``influences`` dict, and ``harmful``/``helpful`` ordered by the mean influence over
  the processed test points) as well as written to ``config["outdir"]`` (created if missing, files overwritten);
  ``time_calc_influence_s`` is the test point's share of the batched computation;
- the model stays on its device (``config["gpu"]`` is not used) and the loaders may shuffle (only their datasets,
  batch sizes and collation are used).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from wherefrom.compat.objective_adapter import ordered_loader
from wherefrom.errors import WherefromError
from wherefrom.methods import InfluenceFunction
from wherefrom.task import Task

log = logging.getLogger(__name__)

__all__ = ["calc_all_grad_then_test", "calc_img_wise", "get_default_config", "init_logging"]

#: How many training ids each test point's ``harmful``/``helpful`` list holds in the JSON file (as in ptif).
LIST_LENGTH = 500


def init_logging(filename: str | None = None) -> None:
    """Log INFO messages to stdout (and to ``filename`` too when given), as ``time: message``."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if filename:
        handlers.insert(0, logging.FileHandler(filename))
    logging.basicConfig(handlers=handlers, level=logging.INFO, format="%(asctime)s: %(message)s")


def get_default_config() -> dict[str, Any]:
    """The default configuration (ptif's documented defaults).

    Keys: ``outdir`` (where the JSON files go), ``seed`` (mini-batch sampling), ``gpu`` (unused: the model's
    device is used), ``dataset``, ``num_classes``, ``test_sample_num`` (test points per class, ``False`` = all),
    ``test_start_index`` (per-class start, ``False`` = take all test points), ``recursion_depth``,
    ``r_averaging``, ``scale``, ``damp``, ``calc_method``, ``log_filename``.
    """
    return {
        "outdir": "outdir",
        "seed": 42,
        "gpu": -1,
        "dataset": "CIFAR10",
        "num_classes": 10,
        "test_sample_num": False,
        "test_start_index": False,
        "recursion_depth": 5000,
        "r_averaging": 1,
        "scale": 25.0,
        "damp": 0.01,
        "calc_method": "img_wise",
        "log_filename": None,
    }


def _setting(config: dict[str, Any], key: str) -> Any:
    value = config.get(key)
    return get_default_config()[key] if value is None else value


def _label(value: Any) -> Any:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _test_ids(config: dict[str, Any], test_loader: DataLoader) -> list[int]:
    """All test ids, or the first ``test_sample_num`` of each class after skipping ``test_start_index`` of them."""
    dataset = test_loader.dataset
    per_class, start = config.get("test_sample_num", False), config.get("test_start_index", False)
    if not per_class or start is False:
        return list(range(len(dataset)))
    num_classes = int(_setting(config, "num_classes"))
    ids: list[int] = []
    for c in range(num_classes):
        seen = 0
        for i in range(len(dataset)):
            if _label(dataset[i][1]) == c:
                seen += 1
                if start < seen <= start + per_class:
                    ids.append(i)
                elif seen > start + per_class:
                    break
    if not ids:
        raise WherefromError(f"No test point matches test_sample_num={per_class}, test_start_index={start} over "
                             f"{num_classes} classes; check the labels and num_classes.")
    return ids


def _influence_scores(config: dict[str, Any], model: nn.Module, train_loader: DataLoader, test_loader: DataLoader,
                      test_ids: list[int], cache_dir: str | None) -> torch.Tensor:
    """ptif's influences ``[n_train, len(test_ids)]`` (``−scale·τ``), from wherefrom's InfluenceFunction."""
    scale, damp = float(_setting(config, "scale")), float(_setting(config, "damp"))
    if scale <= 0 or damp < 0:
        raise WherefromError(f"config needs scale > 0 and damp >= 0, got scale={scale}, damp={damp}.")
    train = ordered_loader(train_loader)
    influence = InfluenceFunction(
        Task(model), solver="lissa", damping=damp * scale, scale=scale, depth=int(_setting(config, "recursion_depth")),
        repeats=int(_setting(config, "r_averaging")), hvp_batch_size=train.batch_size,
        seed=int(_setting(config, "seed")), average=0.0, batch_size=train.batch_size, cache_dir=cache_dir,
        memory_gb=0.0 if cache_dir is not None else 2.0,
    ).fit(train)
    test = ordered_loader(test_loader, test_ids)
    return -scale * influence.score(test)


def _results(config: dict[str, Any], model: nn.Module, train_loader: DataLoader, test_loader: DataLoader,
             cache_dir: str | None) -> tuple[dict[str, Any], list[int], list[int], list[int]]:
    test_ids = _test_ids(config, test_loader)
    start = time.time()
    scores = _influence_scores(config, model, train_loader, test_loader, test_ids, cache_dir)
    per_test = (time.time() - start) / len(test_ids)
    influences: dict[str, Any] = {}
    for j, i in enumerate(test_ids):
        column = scores[:, j]
        helpful = torch.argsort(column, stable=True).tolist()  # most negative influence = most helpful
        influences[str(i)] = {
            "label": _label(test_loader.dataset[i][1]),
            "num_in_dataset": j,
            "time_calc_influence_s": per_test,
            "influence": column.tolist(),
            "harmful": helpful[::-1][:LIST_LENGTH],
            "helpful": helpful[:LIST_LENGTH],
        }
    order = torch.argsort(scores.mean(dim=1), stable=True).tolist()
    log.info("Most harmful training ids: %s", order[::-1][:3])
    log.info("Most helpful training ids: %s", order[:3])
    return influences, order[::-1], order, test_ids


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)


def calc_img_wise(config: dict[str, Any], model: nn.Module, train_loader: DataLoader, test_loader: DataLoader
                  ) -> tuple[dict[str, Any], list[int], list[int]]:
    """Influences of every training example on each selected test point.

    Returns ``(influences, harmful, helpful)``: ``influences[str(test_id)]`` holds ``label``, ``num_in_dataset``,
    ``time_calc_influence_s``, ``influence`` (``n_train`` floats, negative = helpful) and the first 500 ids of its
    ``harmful`` and ``helpful`` lists; ``harmful``/``helpful`` order all training ids by the mean influence over
    the selected test points (most harmful / most helpful first). Writes
    ``influences_results_meta_{start}-{num}.json`` (the config and the test ids) and
    ``influence_results_{start}_{num}.json`` (the ``influences`` dict) to ``config["outdir"]``.
    """
    outdir = Path(_setting(config, "outdir"))
    start, num = config.get("test_start_index", False), config.get("test_sample_num", False)
    influences, harmful, helpful, test_ids = _results(config, model, train_loader, test_loader, None)
    meta = copy.deepcopy(config)
    meta["test_sample_index_list"] = test_ids
    _write_json(meta, outdir / f"influences_results_meta_{start}-{num}.json")
    _write_json(influences, outdir / f"influence_results_{start}_{num}.json")
    return influences, harmful, helpful


def calc_all_grad_then_test(config: dict[str, Any], model: nn.Module, train_loader: DataLoader,
                            test_loader: DataLoader) -> tuple[dict[str, Any], list[int], list[int]]:
    """As :func:`calc_img_wise`, with the training gradients stored on disk under ``outdir/grad_z``.

    A later call with the same model and training data reuses the stored gradients. Writes
    ``influence_results.json`` (the ``influences`` dict) to ``config["outdir"]`` and returns
    ``(influences, harmful, helpful)``.
    """
    outdir = Path(_setting(config, "outdir"))
    cache_dir = os.fspath(outdir / "grad_z")
    influences, harmful, helpful, _ = _results(config, model, train_loader, test_loader, cache_dir)
    _write_json(influences, outdir / "influence_results.json")
    return influences, harmful, helpful

