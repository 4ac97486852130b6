"""The ``wherefrom attribute`` pipeline: load the spec, fit (or load) the method, score, save the results.

    plan = plan_attribution("my_spec.py", AttributeOptions(method="ekfac", test="0:20", top_k=10), "out")
    print(describe_plan(plan))                         # --dry-run
    results, reused = run_attribution(plan, "out")     # writes out/results.json, scores, top-k, examples

One pass over the score blocks of the selected test examples yields the dense ``[n_train, m]`` scores (an output:
``m`` is the ``--test`` selection) and the streamed top-k. A rerun with the same inputs (spec source, model
weights, data size, method, options, test indices, k) reuses the saved results without fitting or scoring.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

import wherefrom
from wherefrom.data.loaders import as_loader, collate_indices, dataset_size
from wherefrom.errors import WherefromError
from wherefrom.execution import Execution
from wherefrom.progress import track
from wherefrom.registry import METHODS, MethodContext, make_method, method_names
from wherefrom.report.errors import ReportError, ResultsError, SpecInvalidError, UsageError
from wherefrom.report.memory import estimate_memory, format_bytes
from wherefrom.report.options import parse_test_range, resolve_method
from wherefrom.report.results import AttributionResults, read_config
from wherefrom.report.spec import Spec, load_spec
from wherefrom.report.views import ViewOptions, make_view
from wherefrom.store import StreamingTopK, tensor_fingerprint
from wherefrom.task import Task

#: methods whose scores are scaled to the predicted leave-one-out change of the test target.
LOO_SCALED_PREFIXES = ("if-", "logra", "hydra")
FIT_DIR, FIT_KEY_FILE, CACHE_DIR = "fit", "fit.json", "cache"


@dataclass
class AttributeOptions:
    """What to compute (the command-line options of ``wherefrom attribute``)."""

    method: str = "if-ekfac"
    test: str | None = None  # None: the first 20 test examples (or all when fewer)
    top_k: int = 10
    options: dict[str, Any] = field(default_factory=dict)
    self_influence: bool = True
    n_self_influence: int = 24
    refit: bool = False


@dataclass
class Plan:
    """Everything resolved before any expensive work: spec, task, attributor, data, test selection."""

    source: str
    spec: Spec
    method: str
    options: AttributeOptions
    task: Task
    attributor: Any
    train: DataLoader
    test_all: DataLoader
    test: DataLoader
    test_indices: list[int]
    n_train: int
    n_test: int


# ---------------------------------------------------------------------------------------------- planning
def _subset_loader(loader: DataLoader, indices: list[int]) -> DataLoader:
    return DataLoader(Subset(loader.dataset, indices), batch_size=loader.batch_size or 256, shuffle=False,
                      collate_fn=loader.collate_fn)


def plan_attribution(source: str, opts: AttributeOptions, out_dir: str) -> Plan:
    """Load the spec and resolve the method, task, data and test selection (no fitting)."""
    method = resolve_method(opts.method, method_names())
    spec = load_spec(source)
    try:
        task = Task(spec.model, spec.loss_fn, spec.target_fn, params=spec.params, weight_decay=spec.weight_decay,
                    input_fn=spec.input_fn)
        train = as_loader(spec.train, what="training")
        test_all = as_loader(spec.test, what="test")
        n_train, n_test = dataset_size(train), dataset_size(test_all)
    except ReportError:
        raise
    except WherefromError as exc:
        raise SpecInvalidError(f"The spec {source!r} cannot be attributed: {exc}") from exc
    if n_train == 0 or n_test == 0:
        raise SpecInvalidError(f"The spec {source!r} has {n_train} training and {n_test} test examples; both must "
                               "be non-empty.")
    if opts.test is None:
        opts.test = f"0:{min(20, n_test)}"
    test_indices = parse_test_range(opts.test, n_test)
    if not 1 <= opts.top_k <= n_train:
        raise UsageError(f"--top-k {opts.top_k} must be between 1 and the number of training examples ({n_train}).")
    context = MethodContext(task=task, trajectory=list(spec.checkpoints or []),
                            learning_rates=list(spec.learning_rates or []), ensemble=list(spec.ensemble or []),
                            options=dict(opts.options), recorded_run=lambda: spec.trajectory)
    try:
        attributor = make_method(method, context)
    except TypeError as exc:
        raise UsageError(f"--option {sorted(opts.options)} for method {method!r}: {exc}. See the method's "
                         "constructor arguments (python -c 'import wherefrom; help(wherefrom.InfluenceFunction)').") \
            from exc
    execution = getattr(attributor, "execution", None)
    if isinstance(execution, Execution) and execution.cache_dir is None:  # reuse stores and factors on a rerun
        attributor.execution = dataclasses.replace(execution, cache_dir=os.path.join(out_dir, CACHE_DIR))
    return Plan(source, spec, method, opts, task, attributor, train, test_all, _subset_loader(test_all, test_indices),
                test_indices, n_train, n_test)


def _example_fingerprint(loader: DataLoader, index: int) -> str:
    batch = collate_indices(loader, [index])
    tensors = [t for t in (batch if isinstance(batch, (list, tuple)) else [batch]) if isinstance(t, torch.Tensor)]
    return tensor_fingerprint(*[t.float() for t in tensors]) if tensors else "?"


def _digest(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def fit_key(plan: Plan) -> str:
    """Which inputs a fit depends on: method, options, model weights, training data size and ends."""
    state = plan.task.state(None)
    return _digest({"method": plan.method, "options": plan.options.options, "n_train": plan.n_train,
                    "theta": tensor_fingerprint(plan.task.flat_params(state)), "params": plan.task.param_names,
                    "train_ends": [_example_fingerprint(plan.train, 0),
                                   _example_fingerprint(plan.train, plan.n_train - 1)]})


def results_key(plan: Plan) -> str:
    """Which inputs saved results depend on: the fit's inputs plus the test selection, k and display fields."""
    s, o = plan.spec, plan.options
    return _digest({"fit": fit_key(plan), "source": plan.source, "n_test": plan.n_test, "test": plan.test_indices,
                    "test_ends": [_example_fingerprint(plan.test_all, i) for i in (plan.test_indices[0],
                                                                                   plan.test_indices[-1])],
                    "k": o.top_k, "self_influence": o.self_influence, "n_self": o.n_self_influence,
                    "display": [s.name, s.class_names, s.input_kind, s.feature_names]})


def describe_plan(plan: Plan, out_dir: str) -> str:
    """What ``run_attribution`` would compute, what it would reuse from ``out_dir``, and its rough memory."""
    o, p = plan.options, plan.task.num_params
    saved = read_config(out_dir) if os.path.isdir(out_dir) else None
    if saved is not None and saved.get("key") == results_key(plan) and not o.refit:
        reuse = f"{out_dir} holds results for exactly these inputs: they would be reused (nothing recomputed)"
    elif _fit_is_loadable(plan.attributor, out_dir, fit_key(plan)) and not o.refit:
        reuse = f"{out_dir}/{FIT_DIR} holds a saved fit for these inputs: it would be loaded"
    else:
        reuse = "nothing saved for these inputs: everything is computed"
    lines = [
        f"spec:      {plan.source}" + (f"  ({plan.spec.name})" if plan.spec.name else ""),
        f"model:     {type(plan.task.model).__name__}, {p:,} parameters attributed, on {plan.task.device}",
        f"data:      {plan.n_train:,} training examples; {len(plan.test_indices)} of {plan.n_test:,} test examples "
        f"(--test {o.test})",
        f"method:    {plan.method}: {METHODS[plan.method].description}"
        + (f"  options {o.options}" if o.options else ""),
        "would compute:",
        f"  fit {plan.method} on {plan.n_train:,} training examples",
        f"  scores [{plan.n_train:,} × {len(plan.test_indices)}] and the top-{o.top_k} helpful / harmful of each "
        "test example",
    ]
    if o.self_influence:
        lines.append(f"  self-influence of the {plan.n_train:,} training examples (the top {o.n_self_influence} shown)")
    lines += [f"  predictions, thumbnails and the report in {out_dir}", f"reuse:     {reuse}",
              "predicted memory (rough: the large arrays kept; not the process, data or autograd workspace):"]
    rows = estimate_memory(plan.attributor, plan.task, plan.n_train, len(plan.test_indices))
    width = max(len(w) for w, _ in rows)
    for what, nbytes in rows:
        lines.append(f"  {what:<{width}}  {format_bytes(nbytes) if nbytes is not None else '—'}")
    total = sum(n for _, n in rows if n is not None)
    lines.append(f"  {'total':<{width}}  ≈ {format_bytes(total)}")
    staged = _staged_plan(plan)
    if staged is not None:
        lines += ["predicted peak memory and disk per stage (wherefrom.scale.plan, features in a zarr store; "
                  "process baseline included):",
                  *(f"  {row}" for row in str(staged).splitlines())]
    return "\n".join(lines)


def _staged_plan(plan: Plan) -> Any:
    """The scale planner's per-stage table for attributors with a gradient source (``None`` for the others)."""
    if getattr(getattr(plan.attributor, "source", None), "dim", None) is None:
        return None
    from wherefrom.scale.planner import plan as scale_plan

    try:
        return scale_plan(plan.attributor, plan.n_train, n_test=len(plan.test_indices), k=plan.options.top_k)
    except WherefromError:
        return None


# ---------------------------------------------------------------------------------------------- fitting
def _fit_is_loadable(attributor: Any, out_dir: str, key: str) -> bool:
    path = os.path.join(out_dir, FIT_KEY_FILE)
    if not (hasattr(attributor, "save") and hasattr(wherefrom, "load") and os.path.isfile(path)):
        return False
    try:
        with open(path) as fh:
            return json.load(fh).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def fit_or_load(attributor: Any, task: Task, train: DataLoader, out_dir: str, key: str,
                refit: bool = False, log: Callable[[str], None] = lambda m: None) -> tuple[Any, str]:
    """Return ``(fitted attributor, "loaded" | "fitted")``: the saved fit of ``out_dir`` when it matches ``key``.

    Uses the attributor's ``save(path)`` and ``wherefrom.load(path, task)`` when the library offers them, and
    refits otherwise (or when the saved fit is missing, stale, unreadable, or ``refit`` is set). After a fit the
    state is saved to ``out_dir/fit`` with ``key`` in ``out_dir/fit.json``.
    """
    fit_dir = os.path.join(out_dir, FIT_DIR)
    if not refit and _fit_is_loadable(attributor, out_dir, key):
        try:
            return wherefrom.load(fit_dir, task, train=train), "loaded"
        except (WherefromError, OSError) as exc:
            log(f"the saved fit in {fit_dir} could not be loaded ({exc}); fitting again")
    attributor.fit(train)
    if hasattr(attributor, "save") and hasattr(wherefrom, "load"):
        try:
            attributor.save(fit_dir)
            with open(os.path.join(out_dir, FIT_KEY_FILE), "w") as fh:
                json.dump({"key": key}, fh)
        except (WherefromError, OSError, NotImplementedError) as exc:
            log(f"the fit could not be saved ({exc}); a rerun will fit again")
    return attributor, "fitted"


# ---------------------------------------------------------------------------------------------- data helpers
def _labels_of(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, (list, tuple)) and len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
        return batch[1] if batch[1].ndim == 1 else None
    if isinstance(batch, dict):
        for key in ("labels", "label"):
            if isinstance(batch.get(key), torch.Tensor) and batch[key].ndim == 1:
                return batch[key]
    return None


def _first_tensor(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, dict):
        inputs = [inputs["input_ids"]] if "input_ids" in inputs else list(inputs.values())
    if isinstance(inputs, (list, tuple)):
        return next((t for t in inputs if isinstance(t, torch.Tensor)), None)
    return None


def _label_value(label: torch.Tensor | None, k: int) -> int | float | None:
    if label is None:
        return None
    v = label[k].item()
    return int(v) if not label.is_floating_point() else float(v)


def _example(loader: DataLoader, task: Task, index: int, options: ViewOptions) -> dict[str, Any]:
    batch = collate_indices(loader, [index])
    x = _first_tensor(task.input_fn(batch))
    view = make_view(x[0] if isinstance(x, torch.Tensor) and x.ndim >= 1 else None, options)
    view["label"] = _label_value(_labels_of(batch), 0)
    return view


def train_labels(loader: DataLoader) -> torch.Tensor | None:
    """Integer labels ``[n_train]`` of the training data (``batch[1]``), or None when it has none."""
    dataset = loader.dataset
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) >= 2:
        labels = dataset.tensors[1]
    else:
        parts = [_labels_of(b) for b in track(loader, "training labels", len(loader))]
        if any(p is None for p in parts):
            return None
        labels = torch.cat([p.cpu() for p in parts])  # type: ignore[misc]
    labels = labels.detach().cpu()
    return labels.long() if labels.ndim == 1 and not labels.is_floating_point() else None


def predict(task: Task, loader: DataLoader) -> tuple[list[Any], list[float | None]]:
    """Predicted class (argmax, or the output value for one output) and its probability for each example."""
    preds: list[Any] = []
    confidence: list[float | None] = []
    with torch.no_grad(), task.attribution_mode():
        for batch in loader:
            batch = task.prepare_batch(batch)
            inputs = task.input_fn(batch)
            if isinstance(inputs, tuple):
                out = task.model(*inputs)
            elif isinstance(inputs, dict):
                out = task.model(**inputs)
            else:
                out = task.model(inputs)
            out = getattr(out, "logits", out)
            out = out.reshape(out.shape[0], -1).float()
            if out.shape[1] > 1:
                prob = out.softmax(1)
                conf, cls = prob.max(1)
                preds += [int(c) for c in cls.tolist()]
                confidence += [float(c) for c in conf.tolist()]
            else:
                preds += [float(v) for v in out[:, 0].tolist()]
                confidence += [None] * out.shape[0]
    return preds, confidence


# ---------------------------------------------------------------------------------------------- running
def run_attribution(plan: Plan, out_dir: str, log: Callable[[str], None] = lambda m: None,
                    ) -> tuple[AttributionResults, bool]:
    """Fit (or load), score, and save the results in ``out_dir``; ``(results, reused)``.

    ``reused`` is True when ``out_dir`` already held results for exactly these inputs (nothing was recomputed).
    """
    o = plan.options
    key = results_key(plan)
    saved = read_config(out_dir) if os.path.isdir(out_dir) else None
    if saved is not None and saved.get("key") == key and not o.refit:
        try:
            results = AttributionResults.load(out_dir)
            log(f"reusing the saved results in {out_dir} (same spec, weights, method, options and test selection; "
                "--refit recomputes)")
            return results, True
        except ResultsError as exc:
            log(f"the saved results cannot be reused ({exc}); computing them again")
    os.makedirs(out_dir, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    log(f"fitting {plan.method} on {plan.n_train:,} training examples")
    try:
        attributor, how = fit_or_load(plan.attributor, plan.task, plan.train, out_dir, fit_key(plan), o.refit, log)
        timings["fit_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        log(f"scoring {len(plan.test_indices)} test examples")
        top = StreamingTopK(o.top_k)
        blocks = []
        for start, block in track(attributor.iter_score_blocks(plan.test), "scoring (training blocks)"):
            block = block.detach()
            top.update(start, block)
            blocks.append(block.float().cpu())
        scores, topk = torch.cat(blocks, 0), top.result()
        timings["score_s"] = time.perf_counter() - t1
        self_inf = None
        if o.self_influence:
            t2 = time.perf_counter()
            log("self-influence of the training examples")
            try:
                self_inf = attributor.self_influence().detach().float().cpu()
            except (NotImplementedError, WherefromError) as exc:
                log(f"{plan.method} gives no self-influence ({exc}); that panel is left out")
            timings["self_influence_s"] = time.perf_counter() - t2
    except ReportError:
        raise
    except WherefromError as exc:
        raise type(exc)(f"{plan.method} failed on the spec {plan.source!r}: {exc}") from exc

    t3 = time.perf_counter()
    preds, conf = predict(plan.task, plan.test)
    view_options = ViewOptions(plan.spec.input_kind, plan.spec.denormalize, plan.spec.vocabulary,
                               plan.spec.decode, plan.spec.feature_names)
    wanted = set(topk.helpful_indices.flatten().tolist()) | set(topk.harmful_indices.flatten().tolist())
    if self_inf is not None:
        wanted |= set(self_inf.topk(min(o.n_self_influence, plan.n_train)).indices.tolist())
    views: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "test": {}}
    for i in track(sorted(wanted), "training thumbnails", len(wanted)):
        views["train"][i] = _example(plan.train, plan.task, i, view_options)
    for i in plan.test_indices:
        views["test"][i] = _example(plan.test_all, plan.task, i, view_options)
    timings["views_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0

    config = {
        "key": key, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wherefrom_version": wherefrom.__version__, "torch_version": torch.__version__,
        "spec": {"source": plan.source, "name": plan.spec.name},
        "method": plan.method, "method_description": METHODS[plan.method].description,
        "method_options": o.options, "fit": how,
        "score_scale": "leave-one-out" if plan.method.startswith(LOO_SCALED_PREFIXES) else "method",
        "target": "loss" if plan.task.target_sign > 0 else "higher-is-better",
        "n_train": plan.n_train, "n_test": plan.n_test, "num_params": plan.task.num_params,
        "test_indices": plan.test_indices, "top_k": o.top_k, "n_self_influence": o.n_self_influence,
        "class_names": plan.spec.class_names,
        "test_labels": [views["test"][i]["label"] for i in plan.test_indices],
        "test_predictions": preds, "test_confidence": conf, "timings": timings,
    }
    run = getattr(attributor, "trajectory", None)
    if run is not None and run is plan.spec.trajectory:  # trajectory attribution: the steps behind the scores
        from wherefrom.report.panels.training_run import training_run_summary

        shown = torch.cat([topk.helpful_indices.flatten(), topk.harmful_indices.flatten()]).tolist()
        config["training_run"] = training_run_summary(run, shown)
    results = AttributionResults(config, scores, topk, self_inf, train_labels(plan.train), views)
    results.save(out_dir)
    return results, False
