"""Curvature spaces: what a preconditioner is fitted on, in the feature space it works in.

A *space* describes the training side of one checkpoint in one feature space (``d`` features per example):

- ``n``, ``p`` (the feature dimension ``d``; ``dim`` is an alias), ``dtype``, ``device``, ``weight_decay``,
  ``curvature`` (``"hessian"``, ``"ggn"``, ``"fisher"``, ``"empirical_fisher"``);
- the curvature operator ``C`` (data term plus ``wd·I``): :meth:`hvp`, :meth:`minibatch_hvp`, :meth:`dense`,
  :meth:`top_eigenvalue`, :meth:`trace_estimate` — what explicit, CG, LiSSA and Arnoldi need;
- :meth:`feature_blocks`: the training features themselves — what the kernel solve and DataInf need;
- :attr:`layout` and :meth:`samples`: the feature vector's blocks and the curvature samples in factored form —
  what K-FAC, EK-FAC and the diagonal preconditioner need.

Two implementations: :class:`~wherefrom.curvature.TrainingObjective` is the parameter space (full gradients,
Hessian-vector products through the model); :class:`FeatureSpace` is the space of any other gradient source
(projected, LoGra). In a feature space the default curvature is the empirical Fisher of the stored features,
``C = (1/n) Σ_i φ_i φ_iᵀ + wd·I``; the Hessian, Gauss-Newton and true Fisher are available when the source can form
its map ``M`` from full gradients (``C = Mᵀ C_θ M``, through the parameter-space objective).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from wherefrom.curvature.gauss_newton import check_curvature
from wherefrom.curvature.samples import iter_samples, sampled_fisher_labels
from wherefrom.data.loaders import dataset_size
from wherefrom.errors import WherefromError
from wherefrom.progress import track
from wherefrom.sources.base import FeatureBlock, GradientSource, SampleBatch, feature_blocks
from wherefrom.store import FeatureStore


class CurvatureOperator:
    """Shared part of every space: the generic products built on :meth:`hvp` and the data access."""

    n: int
    p: int
    curvature: str
    weight_decay: float
    source: GradientSource
    loader: DataLoader | None
    state: dict[str, torch.Tensor]
    progress: bool | None
    fisher_seed: int = 0
    c: int = 0
    fn: Any = None
    features: FeatureStore | None = None

    @property
    def dim(self) -> int:
        return self.p

    @property
    def dtype(self) -> torch.dtype:
        return self.source.task.dtype

    @property
    def device(self) -> torch.device:
        return self.source.task.device

    @property
    def task(self):
        return self.source.task

    @property
    def layout(self) -> list[FeatureBlock]:
        return self.source.layout

    def require_data(self) -> DataLoader:
        if self.loader is None:
            raise WherefromError("This curvature needs the training data, which was not given (after wf.load, pass "
                                 "train=).")
        return self.loader

    # ------------------------------------------------------------------ products (subclasses: hvp, minibatch_hvp)
    def hvp(self, V: torch.Tensor, shift: float = 0.0) -> torch.Tensor:  # pragma: no cover - interface
        """``C V + shift · V`` for ``V`` ``[m, p]`` (or ``[p]``)."""
        raise NotImplementedError

    def minibatch_hvp(self, V: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def dense(self, chunk: int = 256) -> torch.Tensor:
        """The full ``[p, p]`` curvature, column block by column block (``p`` products with unit vectors)."""
        H = torch.empty(self.p, self.p, dtype=self.dtype, device=self.device)
        eye_cols = range(0, self.p, chunk)
        for c0 in track(eye_cols, "Hessian columns", len(eye_cols), self.progress):
            c1 = min(c0 + chunk, self.p)
            E = torch.zeros(c1 - c0, self.p, dtype=self.dtype, device=self.device)
            E[torch.arange(c1 - c0), torch.arange(c0, c1)] = 1.0
            H[c0:c1] = self.hvp(E)
        return (H + H.T) / 2

    def top_eigenvalue(self, iters: int = 30, seed: int = 0) -> float:
        """Largest-magnitude eigenvalue of ``C`` by power iteration (used to pick LiSSA's scale)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(self.p, generator=gen, dtype=self.dtype).to(self.device)
        v = v / v.norm()
        lam = 0.0
        for _ in range(iters):
            w = self.hvp(v)
            lam = float(v @ w)
            norm = w.norm()
            if norm == 0:
                return 0.0
            v = w / norm
        return lam

    def trace_estimate(self, probes: int = 64, seed: int = 0) -> float:
        """``tr(C_data)``, the trace of the data term (without ``wd·I``): exact (``p`` products with unit vectors)
        when ``p <= probes``, else Hutchinson's estimate with ``probes`` seeded Rademacher vectors."""
        if self.p <= probes:
            Z = torch.eye(self.p, dtype=self.dtype, device=self.device)
        else:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            Z = (torch.randint(0, 2, (probes, self.p), generator=gen) * 2 - 1).to(dtype=self.dtype,
                                                                                   device=self.device)
        quad = (Z * self.hvp(Z)).sum(1)
        total = float(quad.sum()) if self.p <= probes else float(quad.mean())  # E[zᵀCz] = tr(C)
        return total - self.weight_decay * self.p

    # ------------------------------------------------------------------ data
    def feature_blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """The training features ``(start, [B, p])`` (from the attached store, or computed)."""
        if self.features is not None:
            for start, block in self.features.blocks():
                yield start, block.to(self.device)
            return
        yield from feature_blocks(self.source, self.require_data(), self.state, self.c, self.fn,
                                  progress=self.progress)

    def sampled_labels(self) -> torch.Tensor:
        """Labels ``ŷ_i ∼ softmax(f(x_i; θ̂))`` for the true Fisher, ``[n]``, drawn once with ``fisher_seed``."""
        if getattr(self, "_sampled", None) is None:
            self._sampled = sampled_fisher_labels(self.task, self.require_data(), self.state, self.fisher_seed)
        return self._sampled

    def samples(self, curvature: str | None = None, desc: str = "curvature samples") -> Iterator[list[SampleBatch]]:
        """One pass of curvature samples (see :mod:`wherefrom.curvature.samples`); ``"hessian"`` means GGN."""
        curvature = check_curvature(curvature or self.curvature)
        labels = self.sampled_labels() if curvature == "fisher" else None
        yield from iter_samples(self.source, self.require_data(), self.state, curvature, self.c, labels, desc,
                                self.progress, self.fn)


class FeatureSpace(CurvatureOperator):
    """The training side of one checkpoint in the feature space of a (non-parameter-space) gradient source.

    Args:
        source: the bound gradient source.
        loader: the training data (``None`` after loading, when only the stored features are available).
        state: the checkpoint.
        c: the checkpoint index (selects the source's random projections).
        features: the stored training features (read by the empirical-Fisher products and :meth:`feature_blocks`).
        curvature: ``"empirical_fisher"`` (default) or, when the source can form its map, any other curvature.
        weight_decay: ``wd`` added as ``wd·I`` to the empirical Fisher (the map path uses ``Mᵀ(C_θ + wd I)M``).
        n: number of training examples (default: the loader's).
        fn: the per-example function of the training features (default: the training loss).
    """

    def __init__(self, source: GradientSource, loader: DataLoader | None, state: Mapping[str, torch.Tensor],
                 c: int = 0, features: FeatureStore | None = None, curvature: str = "empirical_fisher",
                 weight_decay: float = 0.0, n: int | None = None, progress: bool | None = False,
                 fn: Any = None, fisher_seed: int = 0) -> None:
        self.source, self.loader, self.state, self.c = source, loader, dict(state), c
        self.features, self.curvature = features, check_curvature(curvature)
        self.weight_decay, self.progress, self.fn, self.fisher_seed = float(weight_decay), progress, fn, fisher_seed
        self.n = n if n is not None else dataset_size(self.require_data())
        self.p = source.dim
        self._objective: Any = None
        self._map: torch.Tensor | None = None

    # ------------------------------------------------------------------ the map path (Hessian, GGN, Fisher)
    def _mapped(self) -> tuple[Any, torch.Tensor]:
        if self._objective is None:
            M = self.source.matrix(self.c, self.dtype, self.device)
            if M is None:
                raise WherefromError(
                    f"curvature={self.curvature!r} in the feature space of {type(self.source).__name__} needs its "
                    "map from full gradients, which this source cannot form (too large, or not linear). Use "
                    "curvature='empirical_fisher' (the default in feature spaces) or a sample-based preconditioner "
                    "(kfac, ekfac, diagonal).")
            from wherefrom.curvature.objective import TrainingObjective

            self._objective = TrainingObjective(self.source.task, self.require_data(), self.state,
                                                curvature=self.curvature, weight_decay=self.weight_decay,
                                                progress=self.progress, fisher_seed=self.fisher_seed)
            self._map = M
        return self._objective, self._map  # type: ignore[return-value]

    def _rows(self, indices: torch.Tensor) -> torch.Tensor:
        idx = indices.to(torch.long).cpu()
        parts = []
        for start, block in self.feature_blocks():
            sel = idx[(idx >= start) & (idx < start + block.shape[0])] - start
            if sel.numel():
                parts.append(block[sel.to(block.device)])
        return torch.cat(parts)

    def hvp(self, V: torch.Tensor, shift: float = 0.0) -> torch.Tensor:
        """``C V + shift · V`` for ``V`` ``[m, p]`` (or ``[p]``)."""
        squeeze = V.ndim == 1
        V = V.reshape(-1, self.p).to(self.dtype)
        if self.curvature == "empirical_fisher":
            out = torch.zeros_like(V)
            for _, F in self.feature_blocks():
                F = F.to(V.dtype)
                out += (V @ F.T) @ F
            out = out.div_(self.n).add_(V, alpha=self.weight_decay + shift)
        else:
            obj, M = self._mapped()
            out = obj.hvp(V @ M.T) @ M
            if shift:
                out.add_(V, alpha=shift)
        return out[0] if squeeze else out

    def minibatch_hvp(self, V: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Stochastic ``C_S V`` on the training examples ``indices`` (mean over them, plus weight decay)."""
        if self.curvature == "empirical_fisher":
            F = self._rows(indices).to(V.dtype)
            return (V @ F.T) @ F / len(indices) + self.weight_decay * V
        obj, M = self._mapped()
        return obj.minibatch_hvp(V @ M.T, indices) @ M

    def dense(self, chunk: int = 256) -> torch.Tensor:
        if self.curvature != "empirical_fisher":
            return super().dense(chunk)
        C = torch.zeros(self.p, self.p, dtype=self.dtype, device=self.device)
        for _, F in self.feature_blocks():
            F = F.to(self.dtype)
            C += F.T @ F
        return C / self.n + self.weight_decay * torch.eye(self.p, dtype=self.dtype, device=self.device)

    def trace_estimate(self, probes: int = 64, seed: int = 0) -> float:
        if self.curvature != "empirical_fisher":
            return super().trace_estimate(probes, seed)
        return sum(float(F.to(torch.float64).pow(2).sum()) for _, F in self.feature_blocks()) / self.n
