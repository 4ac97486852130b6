"""Run registered attribution methods on a benchmark setting and score them against retraining ground truth.

    from wherefrom.bench.runner import run_benchmark
    result = run_benchmark("mnist-lr", ["if-explicit", "tracin"], ["loo", "lds"])
    print(result.table())

Methods come from :mod:`wherefrom.registry` (one registry that every method registers into) and are built from a
:class:`~wherefrom.registry.MethodContext` holding the reference task, the trajectory of the reference run with
its learning rates (TracIn), an ensemble of independently trained models on random 50% subsets (TRAK-M; built
and cached only if a method reads it), the name of the last Linear layer and a penultimate-feature function.

Resources: ``fit s`` and ``score s`` are wall-clock seconds of ``fit(train)`` and ``score(test)``; ``peak MB`` is
the peak resident-set-size increase over the RSS at the start of ``fit``, sampled every 5 ms from
``/proc/self/statm`` during fit and score (Linux; elsewhere the tracemalloc peak, which misses tensor memory).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import traceback
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from wherefrom.bench.groundtruth import Workspace
from wherefrom.bench.settings import Setting, get_setting
from wherefrom.errors import WherefromError, unknown_name
from wherefrom.eval import lds, loo_correlation, noisy_label_auc
from wherefrom.eval.metrics import brittleness
from wherefrom.registry import MethodContext, make_method, method_names
from wherefrom.targets import margin

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


# ---------------------------------------------------------------------------------------------- results
@dataclass
class MethodResult:
    """One row of the results table."""

    method: str
    fit_s: float = math.nan
    score_s: float = math.nan
    peak_mb: float = math.nan
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def value(self, name: str) -> float:
        v = self.metrics.get(name)
        return float(v["value"]) if isinstance(v, dict) and v.get("value") is not None else math.nan


@dataclass
class BenchResult:
    """All rows of a benchmark run plus what it ran on."""

    setting: dict
    metrics: list[str]
    rows: list[MethodResult]
    ground_truth: dict
    options: dict

    COLUMNS: ClassVar = (("fit s", "fit_s"), ("score s", "score_s"), ("peak MB", "peak_mb"))
    METRIC_COLUMNS: ClassVar = {"loo": [("LOO P", "loo_pearson"), ("LOO S", "loo_spearman")],
                                "lds": [("LDS", "lds")], "auc": [("AUC", "auc")],
                                "brittle": [("brittle k", "brittle_mean_k")]}

    def columns(self) -> list[tuple[str, str]]:
        cols = list(self.COLUMNS)
        for m in self.metrics:
            cols += self.metric_columns(m)
        return cols

    def metric_columns(self, metric: str) -> list[tuple[str, str]]:
        """Columns of one metric (one LDS column per subset fraction when several were measured)."""
        fractions = self.ground_truth.get("lds", {}).get("fractions", [])
        if metric == "lds" and len(fractions) > 1:
            return [(f"LDS α={f:g}", f"lds@{f:g}") for f in fractions]
        return self.METRIC_COLUMNS[metric]

    def table(self, fmt: str = "markdown") -> str:
        """The results as a markdown table (method, fit s, score s, peak MB, then the metrics)."""
        cols = self.columns()
        lines = ["| method | " + " | ".join(c for c, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for r in self.rows:
            cells = []
            for _, key in cols:
                v = getattr(r, key) if hasattr(r, key) else r.value(key)
                if key.startswith("lds") and not math.isnan(v):
                    ci = r.metrics[key]["ci"]
                    cells.append(f"{v:.3f} ± {(ci[1] - ci[0]) / 2:.3f}")
                elif key in ("fit_s", "score_s"):
                    cells.append(f"{v:.2f}")
                elif key == "peak_mb":
                    cells.append(f"{v:.0f}")
                else:
                    cells.append("—" if math.isnan(v) else f"{v:.3f}")
            name = r.method if r.error is None else f"{r.method} (failed: {r.error.splitlines()[0][:60]})"
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"setting": self.setting, "metrics": self.metrics, "options": self.options,
                "ground_truth": self.ground_truth,
                "rows": [{"method": r.method, "fit_s": r.fit_s, "score_s": r.score_s, "peak_mb": r.peak_mb,
                          "metrics": r.metrics, "error": r.error} for r in self.rows]}

    def save(self, out_dir: str, stem: str | None = None) -> tuple[str, str]:
        """Write ``<stem>.json`` and ``<stem>.png`` (a bar chart of the metrics) to ``out_dir``."""
        os.makedirs(out_dir, exist_ok=True)
        stem = stem or self.setting["name"]
        jpath, ppath = os.path.join(out_dir, f"{stem}.json"), os.path.join(out_dir, f"{stem}.png")
        with open(jpath, "w") as fh:
            json.dump(self.to_dict(), fh, indent=2, default=_jsonable)
        self.plot(ppath)
        return jpath, ppath

    def plot(self, path: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = [(label, key) for m in self.metrics for label, key in self.metric_columns(m) if m != "brittle"]
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(self.rows) * max(1, len(keys)) / 2 + 3), 4))
        width = 0.8 / max(1, len(keys))
        x = np.arange(len(self.rows))
        for k, (label, key) in enumerate(keys):
            vals = [r.value(key) for r in self.rows]
            ax.bar(x + k * width, [0 if math.isnan(v) else v for v in vals], width, label=label)
        ax.set_xticks(x + width * (len(keys) - 1) / 2)
        ax.set_xticklabels([r.method for r in self.rows], rotation=30, ha="right")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_title(f"wherefrom bench {self.setting['name']}")
        if keys:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return str(obj)


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


def build_context(ws: Workspace, options: dict | None = None, ensemble_size: int = 5, seed: int = 0,
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
    ensemble_size: int = 5,
    noise: float = 0.1,
    target: str = "loss",
    options: dict[str, dict] | None = None,
    brittle_points: int = 5,
    brittle_ks: Sequence[int] = (10, 20, 40, 80),
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Train or load the setting, build or load its ground truth, run every method, compute the metrics.

    Args:
        setting: a setting name (see ``wherefrom bench --list``) or :class:`Setting`.
        methods: registered method names (comma-separated or a list); default: every registered method.
        metrics: any of ``loo``, ``lds``, ``auc``, ``brittle``.
        loo_indices: train positions whose LOO retraining is the ground truth (default: all).
        n_subsets, fraction: LDS subsets ``M`` and the kept fraction(s) ``α`` (default: the setting's
            ``lds_fractions``; with several, one LDS column per fraction, keys ``lds@α``).
        ensemble_size: models in ``MethodContext.ensemble`` (trained on random 50% subsets, cached).
        noise: fraction of flipped labels for ``auc``.
        target: ``"loss"`` or ``"margin"``: what is attributed and what the ground truth measures.
        options: per-method options ``{method: {option: value}}`` on top of the setting's defaults.
    A method that raises is reported with its error instead of stopping the run.
    """
    say = log or (lambda s: None)
    s = get_setting(setting) if isinstance(setting, str) else setting
    names = _parse_list(methods, method_names(), "method") if methods else method_names()
    mets = _parse_list(metrics, list(METRICS), "metric")
    if target not in ("loss", "margin"):
        raise WherefromError(f"target must be 'loss' or 'margin', got {target!r}.")
    target_fn = margin if target == "margin" else None
    ws = Workspace(s, cache_dir=cache_dir, workers=workers, progress=progress)
    train, test = ws.datasets()
    say(f"setting {s.name} ({s.key()}): reference model")
    ws.reference()
    gt_info: dict[str, Any] = {"cache": ws.root}
    loo_gt = None
    lds_gts: dict[str, Any] = {}
    fractions = list(s.lds_fractions) if fraction is None else (
        [float(fraction)] if isinstance(fraction, (int, float)) else [float(f) for f in fraction])
    if "loo" in mets:
        say("LOO ground truth")
        loo_gt = ws.loo(loo_indices)
        gt_info["loo"] = {"n_models": len(loo_gt.indices), "build_s": loo_gt.seconds}
    if "lds" in mets:
        say("LDS ground truth")
        for f in fractions:
            lds_gts["lds" if len(fractions) == 1 else f"lds@{f:g}"] = ws.lds(n_subsets, f)
        gt_info["lds"] = {"n_subsets": n_subsets, "fractions": fractions,
                          "build_s": [g.seconds for g in lds_gts.values()]}
    noisy_ws = None
    if "auc" in mets:
        noisy_ws = Workspace(s.replace(label_noise=noise), cache_dir=cache_dir, workers=workers, progress=progress)
        noisy_ws.reference()
        gt_info["auc"] = {"noise": noise, "n_flipped": int(noisy_ws.setting.flipped_mask().sum())}
    brittle_tests = None
    if "brittle" in mets:
        ref_pred = ws.reference_outputs().pred.numpy()[0]
        correct = np.nonzero(ref_pred == test.tensors[1].numpy())[0]
        brittle_tests = correct[:brittle_points].tolist()
        gt_info["brittle"] = {"test_indices": brittle_tests, "search_space": list(brittle_ks)}
    options = options or {}
    rows = []
    for name in names:
        opts = {**s.method_options.get(name, {}), **options.get(name, {})}
        row = MethodResult(name)
        say(f"method {name} {opts}")
        try:
            ctx = build_context(ws, opts, ensemble_size, target_fn=target_fn)
            attributor = make_method(name, ctx)
            with PeakMemory() as mem:
                t0 = time.perf_counter()
                attributor.fit(train)
                row.fit_s = time.perf_counter() - t0
                t0 = time.perf_counter()
                scores = attributor.score(test)
                row.score_s = time.perf_counter() - t0
            row.peak_mb = mem.peak_mb
            S = scores.detach().double().cpu().numpy()
            if loo_gt is not None:
                y = loo_gt.loss_change if target == "loss" else -loo_gt.margin_change
                res = loo_correlation(S, y, loo_gt.indices)
                row.metrics["loo_pearson"] = res["pearson"].to_dict()
                row.metrics["loo_spearman"] = res["spearman"].to_dict()
            for key, gt in lds_gts.items():
                row.metrics[key] = lds(S, gt.masks, gt.goodness(target)).to_dict()
            if brittle_tests is not None:
                br = brittleness(S, brittle_tests, test.tensors[1].numpy(), ws.retrain_predict(), brittle_ks,
                                 random_baseline=True)
                mk = br.min_k.astype(float)
                row.metrics["brittle_mean_k"] = {"value": float(np.mean(np.where(mk < 0, np.nan, mk)))
                                                 if (mk >= 0).any() else math.nan, **br.to_dict()}
            if noisy_ws is not None:
                nctx = build_context(noisy_ws, opts, ensemble_size, target_fn=target_fn)
                si = make_method(name, nctx).fit(noisy_ws.datasets()[0]).self_influence()
                row.metrics["auc"] = {"value": noisy_label_auc(si, noisy_ws.setting.flipped_mask())}
        except Exception as exc:  # a failing method is reported, not fatal
            row.error = f"{type(exc).__name__}: {exc}"
            say(traceback.format_exc())
        rows.append(row)
    return BenchResult(s.spec(), mets, rows, gt_info,
                       {"methods": names, "ensemble_size": ensemble_size, "target": target, "options": options})
