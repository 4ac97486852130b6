"""HYDRA (Chen et al., AAAI 2021): training-data attribution by differentiating the recorded training run.

Every training example ``i`` gets a loss weight ``w_i`` (1 in the recorded run) in every batch that holds it. HYDRA
differentiates the final parameters through every recorded optimizer step, ``dθ_T/dw_i``, and scores

    scores[i, j] = sign · ( −⟨∇f_j(θ_T), dθ_T/dw_i⟩ )

the first-order change of test target ``f_j`` when example ``i``'s weight goes from 1 to 0 — i.e. when the *same*
run (same initialisation, same batch order, same schedule) is retrained with ``i`` removed from its batches.
Positive = helpful, as everywhere in wherefrom (``sign = −1`` for a higher-is-better target). In the paper's
``ε`` parametrisation (objective ``(1/N)Σℓ + ε_i ℓ_i``, removal ``ε_i = −1/N``) this is ``−⟨∇f_j, dθ_T/dε_i⟩/N``.

- ``hessian=True``: exact HYDRA, with the Hessian of each step's batch-mean loss at its pre-step ``θ_t``;
- ``hessian=False``: the paper's approximation (the Hessian term dropped; optimizer momentum, weight decay and
  Adam's normalisation are still differentiated).

Engines (see :mod:`wherefrom.methods.hydra_engines`): ``forward`` (tracked examples), ``reverse`` (all examples,
per test target), ``lean`` (``hessian=False``, SGD; can replay a run recorded without its parameters) and ``auto``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from wherefrom.data.loaders import DataLike, as_loader, dataset_size
from wherefrom.errors import WherefromError, unknown_name
from wherefrom.gradients import iter_gradient_blocks
from wherefrom.methods.base import Attributor
from wherefrom.methods.hydra_engines import (
    approx_self_weight_gradients,
    forward_tangents,
    lean_weight_gradients,
    reverse_weight_gradients,
)
from wherefrom.methods.hydra_steps import StepEvaluator, TrajectoryMismatchError, check_compatible
from wherefrom.progress import track as progress_track
from wherefrom.store import TopK
from wherefrom.task import Task
from wherefrom.trajectory.store import Trajectory, import_zarr

ENGINES = ("auto", "forward", "reverse", "lean")


class HYDRA(Attributor):
    """Hypergradient data relevance: attribution by differentiating a recorded training run.

    Args:
        task: the :class:`~wherefrom.task.Task` on the trained model (the run's final parameters). Its
            ``loss_fn`` must be the per-example loss whose batch mean the run minimised; ``target_fn`` is explained.
        trajectory: the :class:`~wherefrom.trajectory.Trajectory` of the run (or the path of a saved one).
        hessian: exact HYDRA (``True``) or the Hessian-free approximation (``False``).
        engine: ``"forward"``, ``"reverse"``, ``"lean"`` or ``"auto"`` (``forward`` when ``track`` is given,
            ``lean`` for a run recorded without its parameters, ``reverse`` otherwise).
        track: forward engine only: the training indices to track, or a fraction in ``(0, 1]`` drawn per class
            (stratified by ``batch[1]``, seeded with ``seed``); ``None`` tracks every example.
        batch_size: examples per per-example-gradient block (training and test).
        targets_per_pass: test targets carried together by one reverse (or lean) pass.
        track_chunk: tracked examples carried together by one forward pass.
        hvp_chunk: vectors per vmapped Hessian-vector product (default: all of a pass at once).
        cache_dir: forward engine: where the tangents ``dθ_T/dw_i`` are kept (zarr) instead of memory; a later run
            with the same trajectory and settings reuses finished chunks and resumes a partial one.
        checkpoint_every: forward engine with ``cache_dir``: save the running tangents every this many steps.
        verify: check every step's recomputed gradient against the recorded one in ``fit`` (one batch gradient
            per step, about one training run of compute).
        check_tol: relative tolerance of that check (default: 1e-8 in float64, 1e-4 otherwise).
        replay_tol: relative tolerance of the lean engine's replay (default: 1e-6 in float64, 1e-2 otherwise).
        seed: seed of the stratified tracking draw.
        progress: show progress bars (``None``: the library default).
    """

    def __init__(self, task: Task, trajectory: Trajectory | str | os.PathLike, hessian: bool = True,
                 engine: str = "auto", *, track: Sequence[int] | float | None = None, batch_size: int = 64,
                 targets_per_pass: int = 128, track_chunk: int = 64, hvp_chunk: int | None = None,
                 cache_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None, verify: bool = True,
                 check_tol: float | None = None, replay_tol: float | None = None, seed: int = 0,
                 progress: bool | None = None) -> None:
        if engine not in ENGINES:
            raise unknown_name("HYDRA engine", engine, ENGINES)
        if not isinstance(trajectory, Trajectory):
            trajectory = Trajectory.load(trajectory)
        self.task, self.trajectory, self.hessian, self.engine = task, trajectory, bool(hessian), engine
        self.track, self.batch_size, self.seed, self.progress = track, batch_size, seed, progress
        self.targets_per_pass, self.track_chunk = max(1, targets_per_pass), max(1, track_chunk)
        self.hvp_chunk = hvp_chunk
        self.cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
        self.checkpoint_every, self.verify = checkpoint_every, verify
        self.check_tol = check_tol
        f64 = task.dtype == torch.float64
        self.replay_tol = float(replay_tol) if replay_tol is not None else (1e-6 if f64 else 1e-2)
        self.engine_ = self._resolve_engine()
        self._ev: StepEvaluator | None = None
        self._loader: DataLoader | None = None
        self.tracked_: torch.Tensor | None = None
        self._z: torch.Tensor | None = None
        self._z_store = None

    # ------------------------------------------------------------------ configuration
    def _resolve_engine(self) -> str:
        traj, engine = self.trajectory, self.engine
        if engine == "auto":
            lean = not traj.stores_params and not self.hessian
            engine = "forward" if self.track is not None else ("lean" if lean else "reverse")
        if engine == "lean" and self.hessian:
            raise WherefromError("engine='lean' is the Hessian-free accumulator: use it with hessian=False, or use "
                                 "engine='reverse' for exact HYDRA of every example.")
        if engine in ("forward", "reverse") and not traj.stores_params:
            raise WherefromError(f"engine={engine!r} needs θ_t of every step, but the run was recorded with "
                                 "store_params=False: record with store_params=True, or use engine='lean' "
                                 "(hessian=False), which replays the run.")
        if self.track is not None and engine != "forward":
            raise WherefromError(f"track= selects the examples of the forward engine; engine={engine!r} scores "
                                 "every training example anyway. Drop track= or use engine='forward'.")
        return engine

    def _require_fit(self) -> StepEvaluator:
        if self._ev is None:
            raise WherefromError("HYDRA is not fitted: call fit(train) first.")
        return self._ev

    @property
    def n_train(self) -> int:
        self._require_fit()
        return dataset_size(self._loader)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ fitting
    def fit(self, train: DataLike) -> HYDRA:
        """Check the run against the task and data; the forward engine computes ``dθ_T/dw_i`` of tracked examples."""
        loader = as_loader(train, self.batch_size, what="training")
        n = dataset_size(loader)
        check_compatible(self.task, self.trajectory, n)
        self._loader = loader
        ev = StepEvaluator(self.task, self.trajectory, loader, self.batch_size,
                           self.hvp_chunk or max(self.targets_per_pass, self.track_chunk), self.check_tol)
        self._ev = ev
        with self.task.attribution_mode():
            if self.verify and self.trajectory.stores_params:
                for step in progress_track(self.trajectory.steps(), "HYDRA gradient check", len(self.trajectory),
                                           self.progress):
                    data = ev.load(step)
                    ev.check(data, ev.batch_grad(data))
            if self.engine_ == "forward":
                self.tracked_ = self._tracked_indices(loader, n)
                self._fit_forward(n)
        return self

    def _tracked_indices(self, loader: DataLoader, n: int) -> torch.Tensor:
        track = self.track
        if track is None:
            return torch.arange(n)
        if isinstance(track, float):
            if not 0 < track <= 1:
                raise WherefromError(f"track as a fraction must be in (0, 1], got {track}.")
            labels = torch.cat([b[1].reshape(-1).cpu() for b in loader]) if self._has_labels(loader) else \
                torch.zeros(n, dtype=torch.long)
            gen = torch.Generator().manual_seed(self.seed)
            picked = []
            for c in torch.unique(labels):
                members = torch.nonzero(labels == c).flatten()
                k = max(1, round(track * members.numel()))
                picked.append(members[torch.randperm(members.numel(), generator=gen)[:k]])
            return torch.sort(torch.cat(picked)).values
        idx = torch.unique(torch.as_tensor(np.asarray(track), dtype=torch.long))
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n:
            raise WherefromError(f"track= must hold training indices in [0, {n}).")
        return idx

    @staticmethod
    def _has_labels(loader: DataLoader) -> bool:
        first = next(iter(loader))
        return isinstance(first, (list, tuple)) and len(first) > 1 and isinstance(first[1], torch.Tensor)

    def _cache_key(self) -> str:
        blob = json.dumps({"trajectory": self.trajectory.fingerprint(), "hessian": self.hessian,
                           "tracked": self.tracked_.tolist(), "chunk": self.track_chunk,
                           "dtype": str(self.task.dtype), "loss": getattr(self.task.loss_fn, "__qualname__", "?")})
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _fit_forward(self, n: int) -> None:
        ev, tracked = self._ev, self.tracked_
        K, p = int(tracked.numel()), ev.num_params
        chunks = [tracked[s:s + self.track_chunk] for s in range(0, K, self.track_chunk)]
        if self.cache_dir is None:
            self._z = torch.cat([forward_tangents(ev, c, n, self.hessian, progress=self.progress).cpu()
                                 for c in chunks]) if K else torch.zeros(0, p, dtype=ev.dtype)
            return
        zarr = import_zarr()
        folder = os.path.join(self.cache_dir, f"hydra-forward-{self._cache_key()}")
        os.makedirs(self.cache_dir, exist_ok=True)
        mode = "r+" if os.path.exists(os.path.join(folder, "zarr.json")) else "w"
        group = zarr.open_group(folder, mode=mode)
        if mode == "w":
            group.create_array("z", shape=(K, p), chunks=(self.track_chunk, min(p, 1 << 22)),
                               dtype=str(ev.dtype).replace("torch.", ""))
            group.attrs.update({"done": [], "tracked": tracked.tolist()})
        for c, chunk in enumerate(chunks):
            if c in group.attrs["done"]:
                continue
            partial = os.path.join(folder, f"partial-{c:05d}.pt")
            resume = torch.load(partial, weights_only=True) if os.path.exists(partial) else None

            def save(state: dict, path: str = partial) -> None:
                tmp = f"{path}.tmp{os.getpid()}"
                torch.save(state, tmp)
                os.replace(tmp, path)

            z = forward_tangents(ev, chunk, n, self.hessian, resume=resume, checkpoint=save,
                                 checkpoint_every=self.checkpoint_every, progress=self.progress)
            start = c * self.track_chunk
            group["z"][start:start + chunk.numel()] = z.cpu().numpy()
            group.attrs["done"] = [*group.attrs["done"], c]
            if os.path.exists(partial):
                os.remove(partial)
        self._z_store = group["z"]

    def _z_blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(k, Z[k:k+b])`` blocks of the tracked tangents (from memory or the zarr store)."""
        if self._z is not None:
            for s in range(0, self._z.shape[0], self.track_chunk):
                yield s, self._z[s:s + self.track_chunk]
            return
        for s in range(0, self._z_store.shape[0], self.track_chunk):
            yield s, torch.from_numpy(np.asarray(self._z_store[s:s + self.track_chunk]))

    # ------------------------------------------------------------------ scoring
    def _query_blocks(self, test: DataLike, block: int) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, Q)`` blocks of test-target gradients ``∇f_j(θ_T)`` ``[b, p]``, ``b ≤ block``."""
        ev = self._require_fit()
        loader = as_loader(test, self.batch_size, what="test")
        pending: list[torch.Tensor] = []
        start = count = 0
        for _, g in iter_gradient_blocks(self.task, loader, ev.state, self.task.target_fn, "target", self.progress):
            pending.append(g)
            count += g.shape[0]
            while count >= block:
                Q = torch.cat(pending)
                yield start, Q[:block]
                pending = [Q[block:]] if Q.shape[0] > block else []
                start, count = start + block, count - block
        if count:
            yield start, torch.cat(pending)

    def _weight_gradients(self, Q: torch.Tensor) -> torch.Tensor:
        """``D[i, k] = d⟨q_k, θ_T⟩/dw_i`` for every training example (reverse or lean engine)."""
        ev = self._require_fit()
        with self.task.attribution_mode():
            if self.engine_ == "lean":
                return lean_weight_gradients(ev, Q, self.n_train, not self.trajectory.stores_params,
                                             self.replay_tol, self.progress)
            return reverse_weight_gradients(ev, Q, self.n_train, self.hessian, self.progress)

    def _column_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, scores[:, start:start+K])`` column blocks of the reverse / lean engines."""
        sign = self.task.target_sign
        for start, Q in self._query_blocks(test, self.targets_per_pass):
            yield start, sign * -self._weight_gradients(Q)

    def _tracked_rows(self, test: DataLike) -> torch.Tensor:
        """Forward engine: scores of the tracked examples ``[n_track, m]``."""
        sign = self.task.target_sign
        cols = []
        for _, Q in self._query_blocks(test, self.targets_per_pass):
            Q = Q.to("cpu")
            cols.append(torch.cat([-(Z.to(Q.dtype) @ Q.T) for _, Z in self._z_blocks()]) * sign)
        return torch.cat(cols, dim=1)

    def score(self, test: DataLike) -> torch.Tensor:
        """``[n_train, n_test]`` scores (positive = helpful). Forward engine: untracked rows are NaN."""
        self._require_fit()
        if self.engine_ == "forward":
            rows = self._tracked_rows(test)
            out = torch.full((self.n_train, rows.shape[1]), float("nan"), dtype=rows.dtype)
            out[self.tracked_] = rows
            return out
        return torch.cat([S.cpu() for _, S in self._column_blocks(test)], dim=1)

    def iter_score_blocks(self, test: DataLike) -> Iterator[tuple[int, torch.Tensor]]:
        """Row blocks of :meth:`score`. The reverse and lean engines produce columns, so this holds the dense
        matrix; use :meth:`top_k` to avoid it."""
        S = self.score(test)
        for s in range(0, S.shape[0], self.batch_size):
            yield s, S[s:s + self.batch_size]

    def top_k(self, test: DataLike, k: int = 10) -> TopK:
        """The ``k`` most helpful and harmful training examples of each test point, one column block at a time
        (forward engine: among the tracked examples)."""
        self._require_fit()
        parts = []
        if self.engine_ == "forward":
            rows = self._tracked_rows(test)
            blocks, index = [(0, rows)], self.tracked_
        else:
            blocks, index = self._column_blocks(test), None
        for _, S in blocks:
            S = S.cpu()
            kk = min(k, S.shape[0])
            hv, hi = torch.topk(S, kk, dim=0)
            lv, li = torch.topk(S, kk, dim=0, largest=False)
            if index is not None:
                hi, li = index[hi], index[li]
            parts.append((hi.T, hv.T, li.T, lv.T))
        return TopK(*(torch.cat([p[c] for p in parts]).contiguous() for c in range(4)))

    def self_influence(self) -> torch.Tensor:
        """``−⟨∇ℓ_i(θ_T), dθ_T/dw_i⟩`` for every training example, ``[n_train]``.

        Forward engine: tracked examples (NaN elsewhere). ``hessian=False``: one reverse pass for all examples.
        Exact reverse engine: one reverse pass per ``targets_per_pass`` training examples (``n_train`` targets).
        """
        ev = self._require_fit()
        n = self.n_train
        with self.task.attribution_mode():
            if self.engine_ == "forward":
                out = torch.full((n,), float("nan"), dtype=ev.dtype)
                loader = as_loader(torch.utils.data.Subset(self._loader.dataset, self.tracked_.tolist()),
                                   self.batch_size, what="training")
                grads = [g.cpu() for _, g in iter_gradient_blocks(self.task, loader, ev.state, None,
                                                                   "training-loss", self.progress)]
                G = torch.cat(grads)
                Z = torch.cat([z.to(G.dtype) for _, z in self._z_blocks()])
                out[self.tracked_] = -(G * Z).sum(1)
                return out
            if not self.hessian:
                return -approx_self_weight_gradients(ev, n, self.progress).cpu()
            out = torch.empty(n, dtype=ev.dtype)
            for start in range(0, n, self.targets_per_pass):
                count = min(self.targets_per_pass, n - start)
                Q = self._train_loss_grads(start, count)
                D = reverse_weight_gradients(ev, Q, n, True, self.progress).cpu()
                r = torch.arange(count)
                out[start + r] = -D[start + r, r]
            return out

    def _train_loss_grads(self, start: int, count: int) -> torch.Tensor:
        """Training-loss gradients at ``θ_T`` of training examples ``start .. start+count``, ``[count, p]``."""
        ev = self._require_fit()
        subset = torch.utils.data.Subset(self._loader.dataset, list(range(start, start + count)))
        loader = as_loader(subset, self.batch_size, what="training")
        return torch.cat([g for _, g in iter_gradient_blocks(self.task, loader, ev.state, None, "training-loss",
                                                             False)])


__all__ = ["ENGINES", "HYDRA", "TrajectoryMismatchError"]
