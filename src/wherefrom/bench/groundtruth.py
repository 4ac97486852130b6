"""Retraining ground truth (LOO, LDS), reference models and ensembles, cached on disk by content hash.

Layout under the cache root (``$WHEREFROM_CACHE``, default ``~/.cache/wherefrom``)::

    <setting.name>/<setting.key()>/
        setting.json                      the spec that produced everything below
        reference.pt                      final state, per-epoch trajectory, learning rates
        trajectory.zarr/                  (sgd and trajectory settings) every optimizer step of the reference run
        hinv.npy                          (LR) inverse Hessian at the optimum, the retraining preconditioner
        loo-<key>/shard-00000.pt ...      LOO outputs, one file per shard of retrained models
        lds-<key>/shard-00000.pt ...      LDS outputs
        ensemble-<key>/member-000.pt ...  independently trained models (shared by every ensemble size)

Every retraining folder also holds ``build.json``: the wall-clock seconds its build really took, summed over the
sessions that built it (an interrupted build resumes and adds to it), so reports can tell building from loading.

A shard file is written atomically when its models are done, so an interrupted build resumes by skipping the
shards that exist. Retraining runs in ``workers`` processes (spawned, with ``wherefrom.threads.worker_threads``
intra-op threads each: cores // workers, at least one) with a progress bar.

Ground truth conventions (see ``docs/evaluation.md``):

- LOO row ``r`` removes train position ``indices[r]`` and keeps the ``1/n`` normalisation of the objective;
  ``loss_change[r, j] = loss_j(θ̂_{−i}) − loss_j(θ̂)`` (positive when ``i`` was helpful), likewise ``margin_change``.
- LDS subset ``s`` is ``⌊α·n⌋`` positions drawn by ``default_rng(seed + s)``; its model is trained on the subset
  alone (objective normalised by ``|S|``; MLPs use training seed ``recipe.seed + 1 + s``). ``goodness`` is
  ``−loss`` (or the margin) of each subset model.
- Trajectory settings (recipe kind ``"trajectory"``) retrain *the same run* instead (same initialisation, batch
  order and schedule) with the removed examples' loss weights set to 0 and the batch mean still over the real batch
  size (:mod:`wherefrom.bench.weighted`, all models of a shard as one batched model): LOO row ``r`` zeroes
  ``indices[r]``; LDS subset ``s`` keeps its ``⌊α·n⌋`` positions (drop fraction ``1 − α``) and zeroes the rest.
  Each shard also retrains the unweighted run and records its largest test-loss difference from the reference
  model (``info["base_max_abs_diff"]``, round-off only).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch

from wherefrom.bench import train as tr
from wherefrom.bench import weighted
from wherefrom.bench.settings import Setting, get_setting
from wherefrom.errors import WherefromError
from wherefrom.progress import track
from wherefrom.threads import apply_worker_threads, worker_threads


def cache_root(override: str | os.PathLike | None = None) -> str:
    """The cache root: ``override``, else ``$WHEREFROM_CACHE``, else ``~/.cache/wherefrom``."""
    if override is not None:
        return os.fspath(override)
    return os.environ.get("WHEREFROM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "wherefrom"))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def _atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


@dataclass
class LOOGroundTruth:
    """``indices [R]``, ``loss_change``/``margin_change`` ``[R, m]``, ``pred [R, m]``, reference ``base_loss [m]``.

    Times: ``seconds`` is what this call took (the cache-load time when nothing was left to build);
    ``build_seconds`` the wall-clock seconds the build took when it ran (``None`` for caches written before it was
    recorded); ``compute_seconds`` the sum of the shards' own seconds (CPU-parallel work, ≥ wall time with workers).
    """

    indices: np.ndarray
    loss_change: np.ndarray
    margin_change: np.ndarray
    pred: np.ndarray
    base_loss: np.ndarray
    base_margin: np.ndarray
    seconds: float = 0.0
    build_seconds: float | None = None
    compute_seconds: float = 0.0


@dataclass
class LDSGroundTruth:
    """``masks [M, n]`` of the subsets, ``loss``/``margin`` ``[M, m]`` of the subset models (times: as LOO)."""

    masks: np.ndarray
    loss: np.ndarray
    margin: np.ndarray
    pred: np.ndarray
    seconds: float = 0.0
    build_seconds: float | None = None
    compute_seconds: float = 0.0

    def goodness(self, target: str = "loss") -> np.ndarray:
        """``−loss`` (default) or the margin: higher is better, as LDS expects."""
        return -self.loss if target == "loss" else self.margin


# ---------------------------------------------------------------------------------------------- worker side
_WORKER_CACHE: dict = {}


def _worker_init(threads: int = 1) -> None:
    apply_worker_threads(threads)
    os.environ.setdefault("WHEREFROM_PROGRESS", "0")


def _load_context(spec: dict, root: str):
    """Per-process cache of the data, reference state and preconditioner of a setting."""
    key = (json.dumps(spec, sort_keys=True), root)
    if key not in _WORKER_CACHE:
        setting = setting_from_spec(spec)
        train, test = setting.datasets()
        ref = torch.load(os.path.join(root, "reference.pt"), weights_only=True)
        hinv = _load_hinv(root) if setting.is_lr else None
        _WORKER_CACHE.clear()
        _WORKER_CACHE[key] = (setting, train, test, ref["state"], hinv)
    return _WORKER_CACHE[key]


def _load_hinv(root: str) -> torch.Tensor:
    """The saved LR preconditioner, memory-mapped read-only (shared between worker processes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns that the memory map is read-only; it is only read
        return torch.from_numpy(np.load(os.path.join(root, "hinv.npy"), mmap_mode="r"))


def _run_shard(spec: dict, root: str, kind: str, rows: list, seeds: list, path: str) -> str:
    """Retrain one shard and save its outputs to ``path``. ``rows``: removed index (loo) or subset (lds)."""
    setting, train, test, ref_state, hinv = _load_context(spec, root)
    n = len(train)
    t0 = time.time()
    if kind == "loo":
        masks = torch.ones(len(rows), n)
        masks[torch.arange(len(rows)), torch.as_tensor(rows)] = 0.0
    else:
        masks = torch.zeros(len(rows), n)
        for k, sub in enumerate(rows):
            masks[k, torch.as_tensor(sub)] = 1.0
    info = {}
    if setting.recipe.kind == "trajectory":
        out_all = weighted.weighted_outputs(setting, train, test, torch.cat([torch.ones(1, n), masks]))
        ref_loss = tr.model_outputs(setting, [ref_state], test).loss[0]
        info = {"base_max_abs_diff": float((out_all.loss[0] - ref_loss).abs().max())}
        out = tr.Outputs(out_all.loss[1:], out_all.margin[1:], out_all.pred[1:])
    elif setting.is_lr:
        denom = torch.full((len(rows),), float(n)) if kind == "loo" else masks.sum(1)
        removed = torch.as_tensor(rows) if kind == "loo" else None
        W, sinfo = tr.retrain_lr(setting, train, ref_state, hinv, masks, denom, loo_removed=removed)
        out = tr.lr_outputs(W, test)
        info = {"iterations": sinfo.iterations, "max_grad_norm": sinfo.max_grad_norm,
                "evaluations": sinfo.evaluations}
    else:
        states = []
        for k in range(len(rows)):
            idx = torch.nonzero(masks[k]).flatten().numpy()
            states.append(tr.train_sgd(setting, train, idx, seed=seeds[k]).state)
        out = tr.model_outputs(setting, states, test)
    _atomic_save({"rows": rows, "loss": out.loss, "margin": out.margin, "pred": out.pred, "info": info,
                  "seconds": time.time() - t0}, path)
    return path


def _read_build_seconds(folder: str) -> float | None:
    """Wall-clock build seconds recorded in ``folder/build.json`` (``None`` if never recorded)."""
    try:
        with open(os.path.join(folder, "build.json")) as fh:
            return float(json.load(fh)["build_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_build_seconds(folder: str, seconds: float) -> None:
    path = os.path.join(folder, "build.json")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump({"build_s": seconds}, fh)
    os.replace(tmp, path)


def _shard_done(path: str, rows: list) -> bool:
    """Whether ``path`` holds the finished outputs of exactly these ``rows`` (resume skips it)."""
    if not os.path.exists(path):
        return False
    try:
        return torch.load(path, weights_only=False)["rows"] == rows
    except Exception:  # a truncated or foreign file is redone
        return False


def setting_from_spec(spec: dict) -> Setting:
    """Rebuild a :class:`Setting` from :meth:`Setting.spec`."""
    from wherefrom.bench.settings import Recipe

    spec = dict(spec)
    recipe = Recipe(**spec.pop("recipe"))
    base = get_setting(spec["name"]) if spec["name"] in _names() else None
    opts = base.method_options if base is not None else {}
    return Setting(recipe=recipe, method_options=opts, **spec)


def _names() -> list[str]:
    from wherefrom.bench.settings import SETTINGS

    return list(SETTINGS)


# ---------------------------------------------------------------------------------------------- workspace
class Workspace:
    """Trained models and ground truth of one setting, built on demand and cached.

    Args:
        setting: a :class:`Setting` or its name.
        cache_dir: cache root (see :func:`cache_root`).
        workers: retraining processes (default: the number of CPUs). ``1`` runs in this process.
        shard_size: models per shard (LR models of a shard are solved as one batched problem).
        progress: show progress bars.
    """

    def __init__(self, setting: Setting | str, cache_dir: str | None = None, workers: int | None = None,
                 shard_size: int | None = None, progress: bool | None = None) -> None:
        self.setting = get_setting(setting) if isinstance(setting, str) else setting
        self.root = os.path.join(cache_root(cache_dir), self.setting.name, self.setting.key())
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self.shard_size = shard_size if shard_size is not None else (
            100 if self.setting.is_lr else 50 if self.is_trajectory else 4)
        self.progress = progress
        os.makedirs(self.root, exist_ok=True)
        spec_path = os.path.join(self.root, "setting.json")
        if not os.path.exists(spec_path):
            with open(spec_path, "w") as fh:
                json.dump(self.setting.spec(), fh, indent=2, sort_keys=True)
        self._data = None
        self._ref: tr.TrainedModel | None = None

    # ---------------------------------------------------------------- data and reference
    @property
    def is_trajectory(self) -> bool:
        """Whether the ground truth retrains the same recorded run with example weights."""
        return self.setting.recipe.kind == "trajectory"

    def datasets(self):
        """``(train, test)`` of the setting (with its label noise, if any)."""
        if self._data is None:
            self._data = self.setting.datasets()
        return self._data

    def reference(self) -> tr.TrainedModel:
        """The reference model (trained once, then loaded)."""
        if self._ref is not None:
            return self._ref
        path = os.path.join(self.root, "reference.pt")
        if os.path.exists(path):
            d = torch.load(path, weights_only=True)
            self._ref = tr.TrainedModel(d["state"], d["trajectory"], d["learning_rates"], d["info"])
            return self._ref
        train, _ = self.datasets()
        t0 = time.time()
        record = os.path.join(self.root, "trajectory.zarr") if self.is_trajectory else None
        model, hinv = tr.train_reference(self.setting, train, record_path=record)
        model.info["seconds"] = time.time() - t0
        if hinv is not None:
            tmp = os.path.join(self.root, f"hinv.tmp{os.getpid()}.npy")
            np.save(tmp, hinv.numpy())
            os.replace(tmp, os.path.join(self.root, "hinv.npy"))
        _atomic_save({"state": model.state, "trajectory": model.trajectory,
                      "learning_rates": model.learning_rates, "info": model.info}, path)
        self._ref = model
        return model

    def recorded_trajectory(self):
        """The reference run recorded step by step (a :class:`~wherefrom.trajectory.Trajectory`), or ``None`` when
        the reference model is not the end of a minibatch run (``lr-exact``). An ``sgd`` setting's run is
        re-trained once with a recorder (same seed) and must end at the cached reference state (to round-off)."""
        if self.setting.recipe.kind not in ("sgd", "trajectory"):
            return None
        from wherefrom.trajectory import Trajectory

        path = os.path.join(self.root, "trajectory.zarr")
        ref = self.reference()
        if not os.path.exists(os.path.join(path, "zarr.json")) or not Trajectory.load(path).meta.get("has_final"):
            train, _ = self.datasets()
            tmp = f"{path}.tmp{os.getpid()}"
            state = tr.train_sgd(self.setting, train, record_path=tmp).state
            diff = max(float((state[k] - ref.state[k]).abs().max()) / max(float(ref.state[k].abs().max()), 1.0)
                       for k in state)
            if diff > (1e-12 if self.setting.recipe.dtype == "float64" else 1e-6):
                raise WherefromError(f"Re-running {self.setting.name}'s training to record it did not reproduce the "
                                     f"cached reference model (max difference {diff:.2e}); delete {self.root}.")
            import shutil

            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        return Trajectory.load(path)

    def reference_outputs(self) -> tr.Outputs:
        _, test = self.datasets()
        return tr.model_outputs(self.setting, [self.reference().state], test)

    # ---------------------------------------------------------------- sharded retraining
    def _retrain(self, kind: str, key: dict, rows: list, seeds: list) -> tuple[dict, float, float | None]:
        self.reference()
        folder = os.path.join(self.root, f"{kind}-{_hash(key)}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "key.json"), "w") as fh:
            json.dump(key, fh, sort_keys=True)
        shards = [(s, rows[s:s + self.shard_size], seeds[s:s + self.shard_size])
                  for s in range(0, len(rows), self.shard_size)]
        paths = [os.path.join(folder, f"shard-{k:05d}.pt") for k in range(len(shards))]
        todo = [(k, sh) for k, sh in enumerate(shards) if not _shard_done(paths[k], sh[1])]
        spec = self.setting.spec()
        t0 = time.time()
        desc = f"{self.setting.name} {kind} retraining ({len(rows)} models)"
        built_before = _read_build_seconds(folder) or 0.0
        if todo and self.workers <= 1:
            for k, (_, rr, ss) in track(todo, desc, len(todo), self.progress):
                _run_shard(spec, self.root, kind, rr, ss, paths[k])
                _write_build_seconds(folder, built_before + time.time() - t0)
        elif todo:
            ctx = get_context("spawn")
            threads = worker_threads(self.workers)
            with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_worker_init,
                                     initargs=(threads,)) as pool:
                futs = [pool.submit(_run_shard, spec, self.root, kind, rr, ss, paths[k]) for k, (_, rr, ss) in todo]
                for f in track(as_completed(futs), desc, len(futs), self.progress):
                    f.result()
                    _write_build_seconds(folder, built_before + time.time() - t0)
        elapsed = time.time() - t0
        parts = [torch.load(p, weights_only=False) for p in paths]
        merged = {name: torch.cat([p[name] for p in parts]).numpy() for name in ("loss", "margin", "pred")}
        merged["info"] = [p["info"] for p in parts]
        merged["shard_seconds"] = float(sum(p["seconds"] for p in parts))
        return merged, elapsed, _read_build_seconds(folder)

    def loo(self, indices: Sequence[int] | None = None) -> LOOGroundTruth:
        """Leave-one-out ground truth for train positions ``indices`` (default: all of them)."""
        train, _ = self.datasets()
        n = len(train)
        if indices is None and self.setting.loo_default is not None:
            indices = range(min(n, self.setting.loo_default))
        idx = list(range(n)) if indices is None else [int(i) for i in indices]
        if idx and (min(idx) < 0 or max(idx) >= n):
            raise WherefromError(f"LOO indices must be train positions in [0, {n}).")
        seeds = [self.setting.recipe.seed] * len(idx)  # same seed and order as the reference (§16.1)
        merged, elapsed, built = self._retrain("loo", {"indices": idx}, idx, seeds)
        base = self.reference_outputs()
        return LOOGroundTruth(np.asarray(idx), merged["loss"] - base.loss.numpy(),
                              merged["margin"] - base.margin.numpy(), merged["pred"], base.loss.numpy()[0],
                              base.margin.numpy()[0], elapsed, built, merged["shard_seconds"])

    def lds_subsets(self, n_subsets: int = 100, fraction: float = 0.5, seed: int = 0) -> list[list[int]]:
        """The LDS subsets: subset ``s`` = ``⌊α·n⌋`` sorted positions from ``default_rng(seed + s)``."""
        n = len(self.datasets()[0])
        size = int(np.floor(fraction * n))
        if not 0 < size <= n:
            raise WherefromError(f"fraction {fraction} gives an empty subset of {n} examples.")
        return [sorted(np.random.default_rng(seed + s).choice(n, size, replace=False).tolist())
                for s in range(n_subsets)]

    def lds(self, n_subsets: int = 100, fraction: float = 0.5, seed: int = 0) -> LDSGroundTruth:
        """LDS ground truth: ``n_subsets`` models trained on random ``fraction`` subsets."""
        subsets = self.lds_subsets(n_subsets, fraction, seed)
        seeds = [self.setting.recipe.seed + 1 + s for s in range(n_subsets)]
        merged, elapsed, built = self._retrain("lds", {"n_subsets": n_subsets, "fraction": fraction, "seed": seed},
                                        subsets, seeds)
        n = len(self.datasets()[0])
        masks = np.zeros((n_subsets, n), dtype=bool)
        for s, sub in enumerate(subsets):
            masks[s, sub] = True
        return LDSGroundTruth(masks, merged["loss"], merged["margin"], merged["pred"], elapsed, built,
                              merged["shard_seconds"])

    # ---------------------------------------------------------------- ensembles
    def ensemble_folder(self, fraction: float = 0.5, seed: int = 1000) -> str:
        """The folder of the ensemble members (shared by every ensemble size: member ``k`` does not depend on it)."""
        return os.path.join(self.root, f"ensemble-{_hash({'f': fraction, 's': seed})}")

    def ensemble(self, n_models: int = 10, fraction: float = 0.5, seed: int = 1000) -> list[dict]:
        """States of ``n_models`` independently trained models on random ``fraction`` subsets (TRAK-M style).

        Member ``k`` uses the subset of ``default_rng(seed + k)`` and training seed ``seed + k``; cached, so a
        larger ensemble reuses the members of a smaller one. ``build.json`` sums the seconds spent training members.
        """
        folder = self.ensemble_folder(fraction, seed)
        os.makedirs(folder, exist_ok=True)
        train, _ = self.datasets()
        n = len(train)
        states = []
        for k in track(range(n_models), f"{self.setting.name} ensemble", n_models, self.progress):
            path = os.path.join(folder, f"member-{k:03d}.pt")
            if os.path.exists(path):
                states.append(torch.load(path, weights_only=True))
                continue
            t0 = time.time()
            sub = np.sort(np.random.default_rng(seed + k).choice(n, int(fraction * n), replace=False))
            if self.setting.is_lr:
                state = self._lr_subset_model(sub)
            else:
                state = tr.train_sgd(self.setting, train, sub, seed=seed + k).state
            _atomic_save(state, path)
            _write_build_seconds(folder, (_read_build_seconds(folder) or 0.0) + time.time() - t0)
            states.append(state)
        return states

    def ensemble_build_seconds(self, fraction: float = 0.5, seed: int = 1000) -> float | None:
        """Seconds spent training the cached ensemble members (``None`` if never recorded)."""
        return _read_build_seconds(self.ensemble_folder(fraction, seed))

    def ensemble_built(self, fraction: float = 0.5, seed: int = 1000) -> int:
        """How many leading ensemble members are already cached."""
        folder = self.ensemble_folder(fraction, seed)
        k = 0
        while os.path.exists(os.path.join(folder, f"member-{k:03d}.pt")):
            k += 1
        return k

    def _lr_subset_model(self, sub: np.ndarray) -> dict:
        train, _ = self.datasets()
        ref = self.reference()
        hinv = _load_hinv(self.root)
        mask = torch.zeros(1, len(train))
        mask[0, torch.as_tensor(sub)] = 1.0
        W, _ = tr.retrain_lr(self.setting, train, ref.state, hinv, mask, mask.sum(1))
        from wherefrom.bench.lr import to_state

        return to_state(W[0])

    def retrain_predict(self) -> Callable[[list[np.ndarray], list[int]], np.ndarray]:
        """``predict_without(removed, tests)`` for :func:`wherefrom.eval.brittleness` (LR settings: batched)."""
        train, test = self.datasets()
        n = len(train)
        ref = self.reference()

        def predict(removed: list[np.ndarray], tests: list[int]) -> np.ndarray:
            masks = torch.ones(len(removed), n)
            for k, r in enumerate(removed):
                masks[k, torch.as_tensor(np.asarray(r, dtype=np.int64))] = 0.0
            if self.setting.is_lr:
                hinv = _load_hinv(self.root)
                W, _ = tr.retrain_lr(self.setting, train, ref.state, hinv, masks, masks.sum(1))
                out = tr.lr_outputs(W, test)
            elif self.is_trajectory:
                out = weighted.weighted_outputs(self.setting, train, test, masks)
            else:
                states = [tr.train_sgd(self.setting, train, torch.nonzero(m).flatten().numpy()).state
                          for m in masks]
                out = tr.model_outputs(self.setting, states, test)
            return out.pred[torch.arange(len(tests)), torch.as_tensor(tests)].numpy()

        return predict
