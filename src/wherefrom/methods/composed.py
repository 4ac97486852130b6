"""One composition for every gradient method: gradient source × preconditioner × similarity, over checkpoints.

    τ[i, j] = sign · ρ_i · Σ_c w_c · r_ci · s · φ_c(g_i)ᵀ P_c⁻¹ φ_c(q_j) · c_cj

- ``φ_c``: the **gradient source** (:mod:`wherefrom.sources`) at checkpoint ``c``: full gradients, random
  projections, LoGra's Kronecker projections, one layer; ``g_i`` the gradient of the training function (the loss;
  TRAK: the margin) of training example ``i``, ``q_j`` of the test function (the task's target) of test point ``j``;
- ``P_c⁻¹``: the **preconditioner** (:mod:`wherefrom.curvature`) fitted on the training side of checkpoint ``c``
  in the source's feature space: identity, explicit, CG, LiSSA, Arnoldi, K-FAC, EK-FAC, DataInf, kernel, diagonal;
- ``r``, ``c``: the **similarity** (:mod:`wherefrom.similarity`): dot, cosine, RelatIF's normalisation;
- ``w_c``: checkpoint weights (TracIn's learning rates, TRAK's ``1/M``); ``s``: the scale (``"1/n"``: the
  leave-one-out scale of an influence function for a mean-reduced objective; ``1``);
- ``ρ_i``: optional training-row weights (TRAK's ``Q = 1 − p``);
- ``sign``: ``+1`` when the training and test functions are both loss-like or both higher-is-better, else ``−1``,
  so that positive = helpful.

Every method class (InfluenceFunction, TracInCP, GradDot, GradCos, TRAK, LoGra, ProjectedInfluence, RelatIF) is a
preset of :class:`ComposedAttributor`; a new combination needs no subclass::

    att = wf.ComposedAttributor(task, source=wf.sources.KroneckerProjectedGradients(rank=8),
                                preconditioner=wf.curvature.CGSolver(damping=1e-3), scale="1/n")

Training features are computed once per checkpoint and kept in a store (memory, disk under ``cache_dir``, or
recomputed); scoring and self-influence stream over it.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom import targets
from wherefrom.configurable import build, callable_name, config_key
from wherefrom.curvature.base import Preconditioner, make_solver
from wherefrom.curvature.damping import check_damping, damping_config
from wherefrom.curvature.datainf import parameter_groups
from wherefrom.curvature.gauss_newton import check_curvature
from wherefrom.curvature.objective import TrainingObjective
from wherefrom.curvature.space import FeatureSpace
from wherefrom.data.loaders import DataLike, as_loader, dataset_size
from wherefrom.errors import WherefromError
from wherefrom.execution import Execution, resolve_execution
from wherefrom.methods.base import Attributor
from wherefrom.persist import state_fingerprint
from wherefrom.progress import track
from wherefrom.similarity import Similarity, make_similarity
from wherefrom.sources import GradientSource, feature_blocks, make_source
from wherefrom.store import DiskStore, FeatureStore, MemoryStore, RecomputeStore, read_store
from wherefrom.task import Checkpoint, LossFn, Task

log = logging.getLogger(__name__)


class ComposedAttributor(Attributor):
    """A gradient attributor composed of a source, a preconditioner and a similarity (see the module docstring).

    Args:
        task: the :class:`~wherefrom.task.Task`.
        source: a :class:`~wherefrom.sources.GradientSource` (default: full gradients; randomly projected when
            ``projection`` is given).
        preconditioner: a :class:`~wherefrom.curvature.Preconditioner` or a registered name (default identity).
        similarity: ``"dot"`` (default), ``"cosine"``, ``"relatif"``, ``"relatif-theta"`` or a
            :class:`~wherefrom.similarity.Similarity`.
        checkpoints: the checkpoints (state_dicts or paths) to sum over; default: the task's final state.
        weights: one weight per checkpoint (default 1 each).
        scale: ``"1/n"`` (an influence function's leave-one-out scale) or a number (default 1).
        curvature: the curvature the preconditioner inverts when it does not say (default ``"hessian"`` in
            parameter space, ``"empirical_fisher"`` in a projected feature space).
        weight_decay: whether the task's weight decay enters the curvature (``wd·I``).
        train_fn: per-example function of the training features (default: the task's loss).
        test_fn: per-example function of the queries (default: the task's target).
        train_weights: an object with ``fit(attributor, loader) -> Tensor[n]`` giving ``ρ`` (TRAK's ``1 − p``).
        projection: a projection applied to the source's features (the older way to ask for projected gradients).
        execution: :class:`~wherefrom.execution.Execution` options; ``batch_size``, ``memory_gb``,
            ``cache_dir`` and ``progress`` are accepted on their own too.
    """

    def __init__(
        self, task: Task, source: GradientSource | None = None, preconditioner: Preconditioner | str | None = None,
        similarity: Similarity | str = "dot", *, checkpoints: Sequence[Checkpoint] | None = None,
        weights: Sequence[float] | None = None, scale: float | str = 1.0, curvature: str | None = None,
        weight_decay: bool = True, train_fn: LossFn | None = None, test_fn: LossFn | None = None,
        train_weights: Any = None, projection: Any = None, execution: Execution | None = None,
        batch_size: int | None = None, memory_gb: float | None = None, cache_dir: str | None = None,
        progress: bool | None = None,
    ) -> None:
        if not isinstance(task, Task):
            raise WherefromError(f"task must be a wherefrom.Task, got {type(task).__name__}.")
        self.task = task
        self.execution = resolve_execution(execution, batch_size=batch_size, memory_gb=memory_gb,
                                           cache_dir=cache_dir, progress=progress)
        self.projection = projection
        src = make_source(source, projection)
        if getattr(src, "task", None) is not None and src.task is not task:
            src = build(src.config())  # a source already bound to another task: use an unbound copy
        self.source = src.setup(task)
        if preconditioner is None or isinstance(preconditioner, str):
            preconditioner = make_solver(preconditioner or "identity", 0.0)
        self.preconditioner = preconditioner
        self.similarity = make_similarity(similarity)
        self.checkpoints = list(checkpoints) if checkpoints is not None else None
        if weights is not None and self.checkpoints is not None and len(weights) != len(self.checkpoints):
            raise WherefromError(f"weights has {len(weights)} entries but there are {len(self.checkpoints)} "
                                 "checkpoints; give one per checkpoint.")
        self.weights = None if weights is None else [float(w) for w in weights]
        if not (scale == "1/n" or isinstance(scale, (int, float))):
            raise WherefromError(f"scale must be '1/n' or a number, got {scale!r}.")
        self.scale = scale
        self.curvature = check_curvature(curvature) if curvature is not None else None
        self.weight_decay = bool(weight_decay)
        self.train_fn = train_fn
        self.test_fn = test_fn
        self.train_weights = train_weights
        self._reset()

    def _reset(self) -> None:
        self.n_train_: int | None = None
        self._train_loader: DataLoader | None = None
        self._states: list[dict[str, torch.Tensor]] = []
        self._weights: list[float] = []
        self._stores: list[FeatureStore] = []
        self.preconditioners_: list[Preconditioner] = []
        self.spaces_: list[Any] = []
        self._similarity_states: list[dict[str, torch.Tensor]] = []
        self._row_weights: torch.Tensor | None = None
        self.preconditioner_loaded_: bool = False

    # ------------------------------------------------------------------ execution shortcuts
    @property
    def batch_size(self) -> int:
        return self.execution.batch_size

    @property
    def memory_gb(self) -> float:
        return self.execution.memory_gb

    @property
    def cache_dir(self) -> str | None:
        return self.execution.cache_dir

    @property
    def progress(self) -> bool | None:
        return self.execution.progress

    # ------------------------------------------------------------------ composition pieces
    @property
    def train_function(self) -> LossFn:
        return self.task.loss_fn if self.train_fn is None else self.train_fn

    @property
    def test_function(self) -> LossFn:
        return self.task.target_fn if self.test_fn is None else self.test_fn

    @property
    def sign(self) -> float:
        """``+1`` when train and test functions point the same way (both loss-like or both goodness), else ``−1``."""
        same = targets.is_goodness(self.train_function) == targets.is_goodness(self.test_function)
        return 1.0 if same else -1.0

    def _checkpoints(self) -> list[tuple[dict[str, torch.Tensor], float]]:
        """``[(state, weight)]``: the given checkpoints with their weights, or the task's final state."""
        if self.checkpoints is None:
            return [(self.task.state(None), 1.0 if self.weights is None else self.weights[0])]
        weights = self.weights if self.weights is not None else [1.0] * len(self.checkpoints)
        return [(self.task.state(ck), w) for ck, w in zip(self.checkpoints, weights)]

    def _before_fit(self, n: int) -> None:
        """Hook run once ``n`` is known (TRAK converts its kernel damping)."""

    def _after_fit(self) -> None:
        """Hook run at the end of :meth:`fit`."""

    def _apply_scale(self, X: torch.Tensor) -> torch.Tensor:
        if self.scale == "1/n":
            return X / self.n_train
        return X if self.scale == 1 else X * float(self.scale)

    # ------------------------------------------------------------------ fitting
    @property
    def n_train(self) -> int:
        self._require_fit()
        return self.n_train_  # type: ignore[return-value]

    def _require_fit(self) -> None:
        if self.n_train_ is None:
            raise WherefromError(f"{type(self).__name__} is not fitted: call fit(train) first.")

    def _feature_blocks(self, c: int, loader: DataLoader, fn: LossFn | None = None, what: str = "training-loss"):
        return feature_blocks(self.source, loader, self._states[c], c, fn or self.train_function, what,
                              self.progress)

    def _store_key(self, c: int, n: int) -> str:
        return config_key({"source": self.source.config(), "fn": callable_name(self.train_function),
                           "checkpoint": state_fingerprint(self._states[c]), "n": n, "dim": self.source.dim,
                           "params": self.task.param_names, "dtype": str(self.execution.dtype)})

    def _build_store(self, c: int, loader: DataLoader) -> FeatureStore:
        ex = self.execution
        n, dim = dataset_size(loader), self.source.dim
        dtype = ex.dtype or self.task.dtype
        device = torch.device(ex.device) if ex.device is not None else self.task.device

        def blocks() -> Iterator[tuple[int, torch.Tensor]]:
            for start, block in self._feature_blocks(c, loader):
                yield start, block.to(device=device, dtype=dtype)

        if n * dim * torch.empty((), dtype=dtype).element_size() <= ex.memory_gb * 1e9:
            return MemoryStore(torch.cat([b for _, b in blocks()], dim=0), block_size=ex.rows_per_block)
        if ex.cache_dir is not None:
            path = os.path.join(ex.cache_dir, f"train_features_{c}.npy")
            return DiskStore.open_or_build(path, self._store_key(c, n), blocks(), n, dim, dtype, device,
                                           ex.rows_per_block)
        store = RecomputeStore(blocks, n, dim)
        store.block_size = ex.batch_size  # its blocks are the batches (saved and reloaded with the same rows)
        return store

    def _space(self, c: int, loader: DataLoader | None, store: FeatureStore | None) -> Any:
        wd = self.task.weight_decay if self.weight_decay else 0.0
        curvature = self.preconditioner.curvature or self.curvature
        if self.source.parameter_space:
            space = TrainingObjective(self.source.task, loader, self._states[c], progress=False,
                                      curvature=curvature or "hessian", weight_decay=wd, features=store,
                                      source=self.source, n=self.n_train_)  # type: ignore[arg-type]
            space.fn = self.train_fn
            return space
        return FeatureSpace(self.source, loader, self._states[c], c, store, curvature or "empirical_fisher", wd,
                            n=self.n_train_, fn=self.train_fn)

    def _preconditioner_cache(self, c: int, precond: Preconditioner, space: Any) -> tuple[str, str] | None:
        if self.execution.cache_dir is None or not precond.has_factors:
            return None
        key = config_key({"preconditioner": precond.config(), "curvature": space.curvature, "n": space.n,
                          "weight_decay": space.weight_decay, "checkpoint": state_fingerprint(self._states[c]),
                          "source": self.source.config(), "fn": callable_name(self.train_function),
                          "params": self.task.param_names})
        return os.path.join(self.execution.cache_dir, f"preconditioner_{precond.name}_{c}.safetensors"), key

    def _fit_preconditioner(self, c: int, precond: Preconditioner, space: Any) -> None:
        cache = self._preconditioner_cache(c, precond, space)
        if cache is not None and os.path.exists(cache[0]):
            payload = Preconditioner.read(cache[0])
            if payload.get("meta", {}).get("key") == cache[1] and payload.get("solver") == precond.name:
                precond.load_state_dict(payload["state"])
                precond.objective = space
                self.preconditioner_loaded_ = True
                log.info("Loaded %s factors from %s", precond.name, cache[0])
                return
        precond.fit(space)
        if cache is not None:
            precond.save(cache[0], meta={"key": cache[1]})

    def _fit_similarity(self, c: int) -> dict[str, torch.Tensor]:
        if not self.similarity.needs_self:
            return {}
        return self.similarity.fit((F, self._solve(c, F)) for _, F in self._stores[c].blocks())

    def _solve(self, c: int, F: torch.Tensor) -> torch.Tensor:
        """``P_c⁻¹`` applied to stored rows, computed on the model's device and returned to the rows' device."""
        return self.preconditioners_[c].solve(F.to(self.task.device)).to(F.device)

    def fit(self, train: DataLike) -> ComposedAttributor:
        """Compute (or plan to stream) the training features at every checkpoint and fit the preconditioners."""
        loader = as_loader(train, self.execution.batch_size, what="training")
        self._reset()
        self._train_loader = loader
        self.n_train_ = dataset_size(loader)
        self._before_fit(self.n_train_)
        pairs = self._checkpoints()
        self._states = [s for s, _ in pairs]
        self._weights = [float(w) for _, w in pairs]
        templates = [self.preconditioner] + [copy.deepcopy(self.preconditioner) for _ in pairs[1:]]
        show = len(pairs) > 1 and self.progress is not False
        for c in track(range(len(pairs)), "checkpoints", len(pairs), show):
            store = self._build_store(c, loader)
            self._stores.append(store)
            space = self._space(c, loader, store)
            self.spaces_.append(space)
            self._fit_preconditioner(c, templates[c], space)
            self.preconditioners_.append(templates[c])
            self._similarity_states.append(self._fit_similarity(c))
        if self.train_weights is not None:
            self._row_weights = self.train_weights.fit(self, loader)
        self._after_fit()
        return self

    # ------------------------------------------------------------------ scoring
    def _query(self, c: int, loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(s · P_c⁻¹ φ_c(q), c_c)`` for every test point: ``[m, d]`` and ``[m]`` (or None)."""
        Q = torch.cat([b for _, b in self._feature_blocks(c, loader, self.test_function, "target")], dim=0)
        TQ = self.preconditioners_[c].solve(Q)
        col = self.similarity.query_factors(Q, TQ)
        return self._apply_scale(TQ), col

    def query_features(self, test: DataLike) -> list[torch.Tensor]:
        """``s · P_c⁻¹ φ_c(q_j)`` for every checkpoint ``c``: a list of ``[m, d_c]`` tensors."""
        self._require_fit()
        loader = as_loader(test, self.execution.batch_size, what="test")
        return [self._query(c, loader)[0] for c in range(len(self._states))]

    def _term(self, c: int, start: int, F: torch.Tensor, TQ: torch.Tensor, col: torch.Tensor | None,
              cols: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        term = F[:, cols] @ TQ[:, cols].T.to(device=F.device, dtype=F.dtype)
        if col is not None:
            term = term * col.to(device=term.device, dtype=term.dtype).unsqueeze(0)
        row = self._similarity_states[c].get("row")
        if row is not None:
            term = term * row[start: start + F.shape[0]].to(device=term.device, dtype=term.dtype).unsqueeze(1)
        return self._weights[c] * term

    def _finish(self, start: int, acc: torch.Tensor, sign: float) -> torch.Tensor:
        if self._row_weights is not None:
            rho = self._row_weights[start: start + acc.shape[0]].to(device=acc.device, dtype=acc.dtype)
            acc = rho.unsqueeze(1) * acc
        return sign * acc

    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:
        self._require_fit()
        loader = as_loader(test, self.execution.batch_size, what="test")
        queries = [self._query(c, loader) for c in range(len(self._states))]
        sign = self.sign
        for parts in zip(*[store.blocks() for store in self._stores]):
            start = parts[0][0]
            acc = None
            for c, (_, F) in enumerate(parts):
                term = self._term(c, start, F, *queries[c])
                acc = term if acc is None else acc + term
            yield start, self._finish(start, acc, sign)  # type: ignore[arg-type]

    def self_influence(self) -> torch.Tensor:
        """``sim(g_i, g_i)`` with training features on both sides (no sign: both sides are the same function),
        summed over checkpoints with their weights, ``[n_train]``."""
        self._require_fit()
        out = []
        for parts in zip(*[store.blocks() for store in self._stores]):
            start = parts[0][0]
            acc = None
            for c, (_, F) in enumerate(parts):
                state = self._similarity_states[c]
                if "self_quadratic" in state:
                    quad = self._apply_scale(state["self_quadratic"][start: start + F.shape[0]].to(F.dtype))
                else:
                    quad = (F * self._apply_scale(self._solve(c, F)).to(F.dtype)).sum(1)
                term = self._weights[c] * self.similarity.self_similarity(state, start, quad, self._apply_scale)
                acc = term if acc is None else acc + term
            out.append(self._finish(start, acc.unsqueeze(1), 1.0)[:, 0])  # type: ignore[union-attr]
        return torch.cat(out)

    def score_by_module(self, test: DataLike) -> dict[str, torch.Tensor]:
        """Per-module contributions ``τ_l[i, j]`` (parameter-space compositions, one checkpoint).

        The modules are the parameter groups (a parameter name without its last component); the contributions
        sum to :meth:`score` exactly. For block-diagonal preconditioners (K-FAC, EK-FAC, DataInf) ``τ_l`` is the
        score the layer's own curvature block gives; for the others it is that module's share of the inner product.
        Returns ``{module: Tensor[n_train, n_test]}`` (dense: meant for analysis of moderate ``n × m``).
        """
        self._require_fit()
        if len(self._states) != 1 or not self.source.parameter_space:
            raise WherefromError("score_by_module needs one checkpoint and full (unprojected) gradients.")
        slices = self.source.task.param_slices()
        groups = {g: torch.cat([torch.arange(slices[n].start, slices[n].stop) for n in names])
                  for g, names in parameter_groups(self.source.task.param_names).items()}
        TQ, col = self._query(0, as_loader(test, self.execution.batch_size, what="test"))
        parts: dict[str, list[torch.Tensor]] = {g: [] for g in groups}
        for start, F in self._stores[0].blocks():
            for g, idx in groups.items():
                idx = idx.to(F.device)
                parts[g].append(self._finish(start, self._term(0, start, F, TQ.to(F.device), col, idx), self.sign))
        return {g: torch.cat(v) for g, v in parts.items()}

    # ------------------------------------------------------------------ saved state
    def _fitted_state(self, directory: str) -> dict[str, Any]:
        self._require_fit()
        final = state_fingerprint(self.task.state(None))
        stores = []
        for c, store in enumerate(self._stores):
            stores.append({"file": store.write(os.path.join(directory, f"features_{c}")),
                           "block_size": store.block_size})
        return {
            "n": self.n_train_,
            "checkpoints": [None if state_fingerprint(s) == final else s for s in self._states],
            "weights": self._weights,
            "stores": stores,
            "preconditioners": [p.state_dict() for p in self.preconditioners_],
            "damping": [damping_config(p.damping) for p in self.preconditioners_],
            "similarity": self._similarity_states,
            "row_weights": self._row_weights,
        }

    def _restore_fitted(self, state: dict[str, Any], *, directory: str, train: Any = None) -> None:
        self._reset()
        loader = as_loader(train, self.execution.batch_size, what="training") if train is not None else None
        if loader is not None and dataset_size(loader) != state["n"]:
            raise WherefromError(f"train has {dataset_size(loader)} examples but the attributor was fitted on "
                                 f"{state['n']}.")
        self._train_loader = loader
        self.n_train_ = int(state["n"])
        self._before_fit(self.n_train_)
        self._states = [self.task.state(None) if s is None else s for s in state["checkpoints"]]
        self._weights = [float(w) for w in state["weights"]]
        device = torch.device(self.execution.device) if self.execution.device is not None else self.task.device
        for c, desc in enumerate(state["stores"]):
            store = read_store(os.path.join(directory, desc["file"]), device, int(desc["block_size"]))
            self._stores.append(store)
            precond = self.preconditioner if c == 0 else copy.deepcopy(self.preconditioner)
            precond.load_state_dict(state["preconditioners"][c])
            precond.damping = check_damping(state["damping"][c], precond.name, True)
            space = self._space(c, loader, store)
            precond.objective = space
            self.spaces_.append(space)
            self.preconditioners_.append(precond)
            self._similarity_states.append(state["similarity"][c])
        self._row_weights = state["row_weights"]


#: the older name of :class:`ComposedAttributor` (the base of every gradient method).
GradientAttributor = ComposedAttributor
