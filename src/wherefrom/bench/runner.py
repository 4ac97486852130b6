"""Run registered attribution methods on a benchmark setting and score them against retraining ground truth.

    from wherefrom.bench.runner import run_benchmark
    result = run_benchmark("digits-lr", ["if-explicit", "tracin"], ["loo", "lds"], out_dir="bench-results")
    print(result.table(), result.failures())

Methods come from :mod:`wherefrom.registry` (one registry that every method registers into) and are built from a
:class:`~wherefrom.registry.MethodContext` holding the reference task, the trajectory of the reference run with
its learning rates (TracIn), an ensemble of independently trained models on random 50% subsets (TRAK-M; built
and cached only if a method reads it), the name of the last Linear layer and a penultimate-feature function.

A run is checked before any work (:mod:`wherefrom.bench.plan`: names, option keys, ensemble sizes), then

- **incremental**: after each method its row is reported (``on_row``) and, with ``out_dir``, the JSON, table and
  chart are rewritten (:mod:`wherefrom.bench.results`);
- **resumable**: each finished row (no failure) is cached under ``<cache>/<setting>/<key>/results/``, keyed by the
  setting, method, effective options, ensemble size, metrics with their ground-truth parameters, target and a
  fingerprint of the wherefrom source code; a rerun of a killed run reuses those rows (``resume=False``
  recomputes them);
- **honest**: a method that raises, or a metric that raises, is recorded with its error and the run goes on;
  :meth:`BenchResult.failures` names them and the command line exits non-zero.

Resources: ``fit s`` and ``score s`` are wall-clock seconds of ``fit(train)`` and ``score(test)``; ``peak MB`` is
the peak resident-set-size increase over the RSS at the start of ``fit``, sampled every 5 ms from
``/proc/self/statm`` during fit and score (Linux; elsewhere the tracemalloc peak, which misses tensor memory).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from wherefrom.bench.groundtruth import LDSGroundTruth, LOOGroundTruth, Workspace
from wherefrom.bench.plan import DEFAULT_ENSEMBLE, MethodPlan, plan_methods
from wherefrom.bench.results import BenchResult, MethodResult, dumps_strict, environment, now_iso, write_atomic
from wherefrom.bench.settings import Setting, get_setting
from wherefrom.errors import NotApplicableError, WherefromError, unknown_name
from wherefrom.eval import lds, loo_correlation, noisy_label_auc
from wherefrom.eval.metrics import brittleness
from wherefrom.registry import MethodContext, make_method, method_names
from wherefrom.targets import margin

__all__ = ["METRICS", "BenchResult", "LazyCheckpoints", "MethodResult", "PeakMemory", "build_context",
           "run_benchmark"]

METRICS = {
    "loo": "leave-one-out Pearson/Spearman correlation (mean over test points)",
    "lds": "linear datamodeling score (Spearman over subsets, mean over test points)",
    "auc": "noisy-label detection ROC-AUC from self-influence (10% labels flipped, retrained)",
    "brittle": "brittleness: smallest k of top-k helpful removals that flips a correct prediction (LR settings)",
}


# ---------------------------------------------------------------------------------------------- resources
class PeakMemory:
    """Context manager measuring the peak RSS increase (MB) of this process while it is active."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak_mb = 0.0
        self._proc = os.path.exists("/proc/self/statm")

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self._proc:
            self._base = self._rss()
            self._peak = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        else:
            tracemalloc.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        if self._proc:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mb = (self._peak - self._base) / 2**20
        else:
            self.peak_mb = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()


class LazyCheckpoints(Sequence):
    """A sequence of checkpoints built on first access (so that ensembles are trained only when a method uses them)."""

    def __init__(self, n: int, build: Callable[[], list]) -> None:
        self._n, self._build, self._items = n, build, None

    def _get(self) -> list:
        if self._items is None:
            self._items = list(self._build())
        return self._items

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, k):
        return self._get()[k]

    def __iter__(self):
        return iter(self._get())


# ---------------------------------------------------------------------------------------------- runner
def _parse_list(value: str | Sequence[str] | None, known: Sequence[str], kind: str) -> list[str]:
    if value is None:
        return []
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    items = [v for v in items if v]
    for v in items:
        if v not in known:
            raise unknown_name(kind, v, list(known))
    return items


def build_context(ws: Workspace, options: dict | None = None, ensemble_size: int = DEFAULT_ENSEMBLE, seed: int = 0,
                  target_fn=None) -> MethodContext:
    """The :class:`MethodContext` a setting offers: task, trajectory, lazy ensemble, last layer, features."""
    ref = ws.reference()
    task = ws.setting.make_task(ref.state, target_fn=target_fn)
    model = task.model

    def features_fn(batch):
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        with torch.no_grad():
            return model.features(x)

    return MethodContext(
        task=task, trajectory=list(ref.trajectory), learning_rates=list(ref.learning_rates),
        ensemble=LazyCheckpoints(ensemble_size, lambda: ws.ensemble(ensemble_size)),
        features_fn=features_fn, last_layer=ws.setting.last_layer, options=dict(options or {}), seed=seed,
        recorded_run=ws.recorded_trajectory,
    )


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 (16 hex digits) of every ``.py`` file of the installed wherefrom package: a code change invalidates
    cached benchmark rows."""
    import wherefrom

    root = os.path.dirname(os.path.abspath(wherefrom.__file__))
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as fh:
                    h.update(fh.read())
    return h.hexdigest()[:16]


def row_key(setting: Setting, plan: MethodPlan, metric_params: dict, target: str) -> str:
    """The resume key of one method's row (16 hex digits)."""
    blob = dumps_strict({"format": 1, "setting": setting.key(), "method": plan.name, "options": plan.options,
                         "ensemble_size": plan.ensemble_size, "metrics": metric_params, "target": target,
                         "code": code_fingerprint()})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class _GroundTruth:
    """What the metrics compare against (``None`` for metrics not asked for)."""

    loo: LOOGroundTruth | None = None
    lds: dict[str, LDSGroundTruth] | None = None  # metric key ("lds" or "lds@α") → ground truth
    noisy: Workspace | None = None
    brittle_tests: list[int] | None = None


def run_benchmark(
    setting: str | Setting,
    methods: str | Sequence[str] | None = None,
    metrics: str | Sequence[str] = ("loo", "lds"),
    *,
    cache_dir: str | None = None,
    workers: int | None = None,
    loo_indices: Sequence[int] | None = None,
    n_subsets: int = 100,
    fraction: float | Sequence[float] | None = None,
    ensemble_size: int | None = None,
    noise: float = 0.1,
    target: str = "loss",
    options: dict[str, dict] | None = None,
    brittle_points: int = 5,
    brittle_ks: Sequence[int] = (10, 20, 40, 80),
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    out_dir: str | None = None,
    stem: str | None = None,
    resume: bool = True,
    on_row: Callable[[BenchResult, MethodResult], None] | None = None,
    command: str | None = None,
) -> BenchResult:
    """Train or load the setting, build or load its ground truth, run every method, compute the metrics.

    Args:
        setting: a setting name (see ``wherefrom bench --list``) or :class:`Setting`.
        methods: registered method names (comma-separated or a list); default: every registered method.
        metrics: any of ``loo``, ``lds``, ``auc``, ``brittle``.
        loo_indices: train positions whose LOO retraining is the ground truth (default: all).
        n_subsets: the number ``M`` of LDS subsets.
        fraction: the fraction ``α`` of training examples each LDS subset keeps, or several (one LDS column per
            fraction, metric keys ``lds@α``); default: the setting's ``lds_fractions`` (``0.5`` for most).
        ensemble_size: models in ``MethodContext.ensemble`` (trained on random 50% subsets, cached); ``None``:
            as many as each method needs, at least 5. An explicit size smaller than a method needs is an error.
        noise: fraction of flipped labels for ``auc``.
        target: ``"loss"`` or ``"margin"``: what is attributed and what the ground truth measures.
        options: per-method options ``{method: {option: value}}`` on top of the setting's defaults; keys are
            checked against each method's constructor before any work.
        out_dir: when given, ``<out_dir>/<stem>.json``, ``.md`` and ``.png`` are rewritten after every method.
        stem: the file name stem of those outputs.
        resume: reuse rows finished by an earlier (possibly killed) run with the same key.
        on_row: called with ``(result, row)`` after each method (e.g. to print the row).
        command: the command line, recorded in the JSON.
    A method or metric that raises is reported with its error instead of stopping the run.
    """
    say = log or (lambda s: None)
    s = get_setting(setting) if isinstance(setting, str) else setting
    names = _parse_list(methods, method_names(), "method") if methods else method_names()
    mets = _parse_list(metrics, list(METRICS), "metric")
    if target not in ("loss", "margin"):
        raise WherefromError(f"target must be 'loss' or 'margin', got {target!r}.")
    target_fn = margin if target == "margin" else None
    options = options or {}
    fraction = _fractions(s, fraction)
    plans = plan_methods(s, names, options, ensemble_size, target_fn=target_fn)  # fails fast, trains nothing
    metric_params = _metric_params(mets, loo_indices, n_subsets, fraction, noise, brittle_points, brittle_ks)
    result = BenchResult(s.spec(), mets, [], {}, {"methods": names, "ensemble_size": ensemble_size,
                                                  "target": target, "options": options},
                         run={"status": "running", "started": now_iso(), "finished": None, "command": command},
                         env=environment())

    def write(chart: bool = False) -> None:  # the chart changes only when a row is added
        if out_dir is not None:
            result.save(out_dir, stem, chart=chart)

    ws = Workspace(s, cache_dir=cache_dir, workers=workers, progress=progress)
    try:
        gt = _ground_truth(ws, s, mets, result.ground_truth, say, loo_indices, n_subsets, fraction, noise,
                           brittle_points, brittle_ks, cache_dir, workers, progress)
        write()
        for plan in plans:
            key = row_key(s, plan, metric_params, target)
            row = _load_row(ws, plan.name, key) if resume else None
            if row is not None:
                say(f"method {plan.name}: reusing its finished row ({_row_path(ws, plan.name, key)}); "
                    "--fresh recomputes it")
            else:
                say(f"method {plan.name} {plan.options}")
                row = _run_method(plan, key, ws, gt, mets, target, target_fn, brittle_ks, say)
                if row.ok:
                    _save_row(ws, row)
            result.rows.append(row)
            if any(p.ensemble_size for p in plans):
                result.ground_truth["ensemble"] = _ensemble_info(ws)
            write(chart=True)
            if on_row is not None:
                on_row(result, row)
    except BaseException:
        result.run.update(status="interrupted", finished=now_iso())
        write()
        raise
    result.run.update(status="failed" if result.failures() else "complete", finished=now_iso())
    write(chart=not result.rows)
    return result


def _fractions(s: Setting, fraction: float | Sequence[float] | None) -> float | list[float]:
    """The LDS kept fraction(s): one float, or a list of several (the setting's default when ``None``)."""
    values = list(s.lds_fractions) if fraction is None else (
        [fraction] if isinstance(fraction, (int, float)) else list(fraction))
    values = [float(f) for f in values]
    bad = [f for f in values if not 0.0 < f < 1.0]
    if not values or bad:
        raise WherefromError(f"LDS fractions must be kept fractions in (0, 1), got {values}.")
    return values[0] if len(values) == 1 else values


def _metric_params(mets: list[str], loo_indices, n_subsets: int, fraction: float | list[float], noise: float,
                   brittle_points: int, brittle_ks: Sequence[int]) -> dict:
    params: dict[str, Any] = {}
    if "loo" in mets:
        params["loo"] = None if loo_indices is None else [int(i) for i in loo_indices]
    if "lds" in mets:
        params["lds"] = {"n_subsets": n_subsets, "fraction": fraction}
    if "auc" in mets:
        params["auc"] = {"noise": noise}
    if "brittle" in mets:
        params["brittle"] = {"points": brittle_points, "ks": list(brittle_ks)}
    return params


def _ground_truth(ws: Workspace, s: Setting, mets: list[str], info: dict, say, loo_indices, n_subsets, fraction,
                  noise, brittle_points, brittle_ks, cache_dir, workers, progress) -> _GroundTruth:
    """Build or load what the metrics need; ``info`` receives the build times (real, not cache-load)."""
    gt = _GroundTruth()
    info["cache"] = ws.root
    say(f"setting {s.name} ({s.key()}): reference model")
    t0 = time.perf_counter()
    ref = ws.reference()
    info["reference"] = {"train_s": ref.info.get("seconds"), "load_s": time.perf_counter() - t0}
    if "loo" in mets:
        say("LOO ground truth")
        gt.loo = ws.loo(loo_indices)
        info["loo"] = {"n_models": len(gt.loo.indices), "build_s": gt.loo.build_seconds,
                       "compute_s": gt.loo.compute_seconds, "load_s": gt.loo.seconds}
    if "lds" in mets:
        say("LDS ground truth")
        fractions = fraction if isinstance(fraction, list) else [fraction]
        gt.lds = {("lds" if len(fractions) == 1 else f"lds@{f:g}"): ws.lds(n_subsets, f) for f in fractions}
        parts = list(gt.lds.values())
        info["lds"] = {"n_subsets": n_subsets, "fraction": fraction, "fractions": fractions,
                       "build_s": None if any(g.build_seconds is None for g in parts)
                       else sum(g.build_seconds for g in parts),
                       "compute_s": sum(g.compute_seconds or 0.0 for g in parts),
                       "load_s": sum(g.seconds for g in parts)}
    if "auc" in mets:
        say("noisy-label reference model")
        gt.noisy = Workspace(s.replace(label_noise=noise), cache_dir=cache_dir, workers=workers, progress=progress)
        t0 = time.perf_counter()
        nref = gt.noisy.reference()
        info["auc"] = {"noise": noise, "n_flipped": int(gt.noisy.setting.flipped_mask().sum()),
                       "train_s": nref.info.get("seconds"), "load_s": time.perf_counter() - t0}
    if "brittle" in mets:
        _, test = ws.datasets()
        ref_pred = ws.reference_outputs().pred.numpy()[0]
        correct = np.nonzero(ref_pred == test.tensors[1].numpy())[0]
        gt.brittle_tests = correct[:brittle_points].tolist()
        info["brittle"] = {"test_indices": gt.brittle_tests, "search_space": list(brittle_ks)}
    return gt


def _ensemble_info(ws: Workspace) -> dict:
    return {"members_cached": ws.ensemble_built(), "build_s": ws.ensemble_build_seconds()}


def _run_method(plan: MethodPlan, key: str, ws: Workspace, gt: _GroundTruth, mets: list[str], target: str,
                target_fn, brittle_ks: Sequence[int], say) -> MethodResult:
    """Build, fit and score one method, then each metric on its own (a failing metric keeps the others)."""
    row = MethodResult(plan.name, options=plan.options, ensemble_size=plan.ensemble_size, key=key,
                       started=now_iso())
    size = plan.ensemble_size or DEFAULT_ENSEMBLE
    train, test = ws.datasets()
    try:
        attributor = make_method(plan.name, build_context(ws, plan.options, size, target_fn=target_fn))
        with PeakMemory() as mem:
            t0 = time.perf_counter()
            attributor.fit(train)
            row.fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            scores = attributor.score(test)
            row.score_s = time.perf_counter() - t0
        row.peak_mb = mem.peak_mb
        S = scores.detach().double().cpu().numpy()
    except Exception as exc:  # a failing method is reported, not fatal
        row.error = f"{type(exc).__name__}: {exc}"
        row.finished = now_iso()
        say(traceback.format_exc())
        return row
    t_metrics = time.perf_counter()
    for metric in mets:
        try:
            row.metrics.update(_metric(metric, S, plan, ws, gt, target, target_fn, size, brittle_ks))
        except NotApplicableError as exc:  # not a failure: the method does not offer what the metric needs
            for _, key in BenchResult.METRIC_COLUMNS[metric]:
                row.metrics[key] = {"value": None, "not_applicable": str(exc)}
            say(f"method {plan.name}, metric {metric}: not applicable ({exc})")
        except Exception as exc:
            row.metric_errors[metric] = f"{type(exc).__name__}: {exc}"
            say(f"method {plan.name}, metric {metric} failed:\n{traceback.format_exc()}")
    row.metric_s = time.perf_counter() - t_metrics
    row.finished = now_iso()
    return row


def _metric(metric: str, S: np.ndarray, plan: MethodPlan, ws: Workspace, gt: _GroundTruth, target: str, target_fn,
            size: int, brittle_ks: Sequence[int]) -> dict[str, Any]:
    """The entries one metric adds to a row's ``metrics``."""
    if metric == "loo":
        y = gt.loo.loss_change if target == "loss" else -gt.loo.margin_change
        res = loo_correlation(S, y, gt.loo.indices)
        return {"loo_pearson": res["pearson"].to_dict(), "loo_spearman": res["spearman"].to_dict()}
    if metric == "lds":
        return {key: lds(S, g.masks, g.goodness(target)).to_dict() for key, g in gt.lds.items()}
    if metric == "brittle":
        _, test = ws.datasets()
        br = brittleness(S, gt.brittle_tests, test.tensors[1].numpy(), ws.retrain_predict(), brittle_ks,
                         random_baseline=True)
        mk = br.min_k.astype(float)
        mean_k = float(np.mean(np.where(mk < 0, np.nan, mk))) if (mk >= 0).any() else math.nan
        return {"brittle_mean_k": {"value": mean_k, **br.to_dict()}}
    if metric == "auc":
        nctx = build_context(gt.noisy, plan.options, size, target_fn=target_fn)
        method = make_method(plan.name, nctx)
        if not getattr(method, "has_self_influence", True):
            raise NotApplicableError(f"{type(method).__name__} has no self-influence, which noisy-label detection "
                                     "ranks by")
        si = method.fit(gt.noisy.datasets()[0]).self_influence()
        return {"auc": {"value": noisy_label_auc(si, gt.noisy.setting.flipped_mask())}}
    raise unknown_name("metric", metric, list(METRICS))


# ---------------------------------------------------------------------------------------------- finished rows
def _row_path(ws: Workspace, method: str, key: str) -> str:
    return os.path.join(ws.root, "results", f"{method}-{key}.json")


def _save_row(ws: Workspace, row: MethodResult) -> None:
    path = _row_path(ws, row.method, row.key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, dumps_strict(row.to_dict()))


def _load_row(ws: Workspace, method: str, key: str) -> MethodResult | None:
    path = _row_path(ws, method, key)
    try:
        with open(path) as fh:
            row = MethodResult.from_dict(json.load(fh))
    except (OSError, ValueError, KeyError, TypeError):  # absent, truncated or foreign: recompute
        return None
    if row.key != key or not row.ok:
        return None
    row.resumed = True
    return row
