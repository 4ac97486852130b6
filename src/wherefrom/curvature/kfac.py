"""K-FAC and EK-FAC: layer-wise Kronecker-factored curvature (Martens & Grosse 2015; George et al. 2018;
used for influence by Grosse et al. 2023).

For a layer with per-position inputs ``ã_t`` (``[d_in(+1)]``, a trailing 1 for the bias) and output
gradients ``δ_t`` (``[d_out]``), the per-example gradient matrix is ``G = Σ_t δ_t ã_tᵀ`` (``[d_out, d_in(+1)]``,
bias = last column, weight row-major: the flat order of :meth:`Task.param_slices`). The layer's block of the
curvature is ``F_l = (1/n) Σ_i Σ_k vec(G_ik) vec(G_ik)ᵀ`` where ``k`` runs over

- ``curvature="ggn"`` (default; also used for ``"hessian"``): the columns of ``L_i`` with ``L_i L_iᵀ = Λ_i``, the
  output-space Hessian of the loss (``δ_ik = J_iᵀ l_ik``): the exact generalised Gauss-Newton, no sampling;
- ``"fisher"``: one label sampled from the model per example (the true Fisher, as in kronfluence);
- ``"empirical_fisher"``: the true label.

K-FAC approximates ``F_l ≈ S ⊗ A`` with ``A = (1/(nT)) Σ_{i,t} ã_t ã_tᵀ`` and ``S = (1/n) Σ_{i,k,t} δ_t δ_tᵀ``
(exact for ``T = 1`` when ``δδᵀ`` and ``ããᵀ`` are uncorrelated, e.g. one linear layer with a constant
output Hessian). With eigendecompositions ``A = Q_A diag(σ_A) Q_Aᵀ``, ``S = Q_S diag(σ_S) Q_Sᵀ`` (columns are
eigenvectors, computed in float64):

    (F_l + (wd + λ) I)⁻¹ V = Q_S [ (Q_Sᵀ V Q_A) ⊘ (Λ + wd + λ) ] Q_Aᵀ,

with ``Λ = σ_S σ_Aᵀ`` (K-FAC) or, for EK-FAC, the eigenvalue correction ``Λ*[a, b] = (1/n) Σ_{i,k}
(Q_Sᵀ G_ik Q_A)[a, b]²``, the exact diagonal of ``F_l`` in the Kronecker eigenbasis (a second data pass).

Selected parameters that belong to no Linear/Conv2d/Embedding layer fall back, with a warning, to the
diagonal ``(1/n) Σ_{i,k} g_ik²`` of the same curvature. Blocks of different layers are independent (the
approximation is block-diagonal). ``damping=None`` picks ``0.1 · mean(Λ)`` per layer (Grosse et al.'s
heuristic; relative, unlike the absolute ``λ`` of every other solver).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wherefrom.curvature.base import Solver, register_solver
from wherefrom.curvature.gauss_newton import (
    check_curvature,
    output_hessian_roots,
    output_hessians,
    with_labels,
)
from wherefrom.curvature.objective import TrainingObjective
from wherefrom.data.loaders import batch_length
from wherefrom.errors import WherefromError
from wherefrom.gradients import per_example_grad_fn
from wherefrom.layers import LayerIO, capture_layers, kronecker_layers, param_name, uncovered_params
from wherefrom.progress import track
from wherefrom.task import Task

log = logging.getLogger(__name__)


@dataclass
class LayerSpec:
    """Where a layer's ``[d_out, d_in(+1)]`` gradient matrix lives in the flat vector."""

    name: str
    weight: tuple[int, int]
    bias: tuple[int, int] | None
    d_out: int
    d_in: int
    transposed: bool

    @property
    def cols(self) -> int:
        return self.d_in + (1 if self.bias is not None else 0)

    def to_matrix(self, V: torch.Tensor) -> torch.Tensor:
        """Rows of ``V`` ``[m, p]`` → layer matrices ``[m, d_out, d_in(+1)]``."""
        m = V.shape[0]
        W = V[:, self.weight[0]: self.weight[1]]
        W = W.reshape(m, self.d_in, self.d_out).transpose(1, 2) if self.transposed else W.reshape(m, self.d_out,
                                                                                                 self.d_in)
        if self.bias is None:
            return W
        return torch.cat([W, V[:, self.bias[0]: self.bias[1]].unsqueeze(2)], dim=2)

    def write(self, out: torch.Tensor, M: torch.Tensor) -> None:
        """Write layer matrices ``M`` ``[m, d_out, d_in(+1)]`` into the flat rows of ``out`` ``[m, p]``."""
        m = M.shape[0]
        W = M[:, :, : self.d_in]
        if self.transposed:
            W = W.transpose(1, 2)
        out[:, self.weight[0]: self.weight[1]] = W.reshape(m, -1)
        if self.bias is not None:
            out[:, self.bias[0]: self.bias[1]] = M[:, :, -1]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": list(self.weight), "bias": list(self.bias) if self.bias else None,
                "d_out": self.d_out, "d_in": self.d_in, "transposed": self.transposed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerSpec:
        return cls(d["name"], tuple(d["weight"]), tuple(d["bias"]) if d["bias"] else None, d["d_out"], d["d_in"],
                   d["transposed"])


def layer_specs(task: Task, layers: dict[str, nn.Module]) -> list[LayerSpec]:
    """The flat layout of each captured layer's gradient matrix."""
    slices = task.param_slices()
    specs = []
    for name, module in layers.items():
        w = slices[param_name(name, "weight")]
        b = slices.get(param_name(name, "bias")) if getattr(module, "bias", None) is not None else None
        if isinstance(module, nn.Embedding):
            d_out, d_in, tr = module.embedding_dim, module.num_embeddings, True
        else:
            d_out = module.weight.shape[0]
            d_in = module.weight[0].numel()
            tr = False
        specs.append(LayerSpec(name, (w.start, w.stop), (b.start, b.stop) if b is not None else None, d_out, d_in,
                               tr))
    return specs


def _sym_eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    M = M.to(torch.float64)
    evals, evecs = torch.linalg.eigh((M + M.T) / 2)
    return evals.clamp_min(0.0), evecs


@register_solver("kfac")
class KFACSolver(Solver):
    """Block-diagonal Kronecker-factored inverse curvature; :class:`EKFACSolver` adds the eigenvalue correction.

    Args:
        damping: absolute ``λ`` (added with ``wd``), or ``None`` for ``0.1·mean(Λ_l)`` per layer.
        curvature: ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``; ``None`` follows the objective (whose
            ``"hessian"`` becomes ``"ggn"``, the Gauss-Newton part, which is what Kronecker factors describe).
        chunk: examples per block when rotating per-example gradients (bounds memory in the EK-FAC pass).
        progress: show progress bars.

    After ``fit``: ``factors_[layer]`` holds ``QA``, ``QS`` (eigenvectors as columns), ``eigenvalues``
    (``[d_out, d_in(+1)]``, the ``Λ`` used) and ``damping`` (the resolved per-layer ``λ``); ``diagonal_`` the
    fallback diagonal per uncovered parameter; ``data_passes_`` the passes made over the training data.
    """

    eigenvalue_correction = False

    def __init__(self, damping: float | None = 0.0, curvature: str | None = None, chunk: int = 64,
                 progress: bool | None = None) -> None:
        super().__init__(0.0 if damping is None else damping)
        self.damping = damping  # type: ignore[assignment]  (None = relative default, resolved in fit)
        self.curvature = check_curvature(curvature) if curvature is not None else None
        self.chunk = chunk
        self.progress = progress
        self.specs_: list[LayerSpec] = []
        self.factors_: dict[str, dict[str, torch.Tensor]] = {}
        self.diagonal_: dict[str, dict[str, Any]] = {}
        self.weight_decay_: float = 0.0
        self.curvature_: str | None = None
        self.data_passes_: int = 0

    # ------------------------------------------------------------------ curvature samples
    def _resolve_curvature(self, objective: TrainingObjective) -> str:
        c = self.curvature or objective.curvature
        return "ggn" if c == "hessian" else c

    def _samples(self, objective: TrainingObjective, layers: dict[str, nn.Module], uncovered: list[str],
                 desc: str) -> Iterator[tuple[list[dict[str, LayerIO]], torch.Tensor | None]]:
        """Per batch: captures of every curvature sample ``k`` and the uncovered parameters' gradients.

        Yields ``(ios_k, U)`` with ``ios_k`` a list over ``k`` of ``{layer: LayerIO}`` and ``U`` ``[K, B, p_u]``
        (or ``None``): the per-example (pseudo-)gradients of the uncovered parameters.
        """
        task, state, curv = objective.task, objective.state, self.curvature_
        sub = Task(task.model, params=uncovered, input_fn=lambda b: task.input_fn(b[0])) if uncovered else None
        start = 0
        self.data_passes_ += 1
        with task.attribution_mode():
            for batch in track(objective.loader, desc, len(objective.loader), self.progress):
                batch = task.prepare_batch(batch)
                size = batch_length(batch)
                if curv == "ggn":
                    with torch.no_grad():
                        outputs = task.outputs(objective.theta, state, batch)
                    L = output_hessian_roots(output_hessians(task.loss_fn, outputs, batch))  # [B, C, K]
                    vectors = [L[:, :, k] for k in range(L.shape[2])]
                    fns = [_pseudo_loss(v) for v in vectors]
                    batches = [batch] * len(fns)
                else:
                    if curv == "fisher":
                        batch = with_labels(batch, objective.sampled_labels()[start: start + size])
                    fns, batches, vectors = [task.loss_fn], [batch], [None]
                ios = [capture_layers(task, state, b, fn, layers) for fn, b in zip(fns, batches)] if layers else []
                U = None
                if sub is not None:
                    rows = []
                    for v, b in zip(vectors, batches):
                        if v is None:
                            fn_u = _label_loss(task.loss_fn)
                            aug = (b, torch.zeros(size, dtype=objective.dtype, device=objective.device))
                        else:
                            fn_u, aug = _augmented_pseudo_loss, (b, v)
                        rows.append(per_example_grad_fn(sub, fn_u, state)(sub.flat_params(state), aug).detach())
                    U = torch.stack(rows)
                yield ios, U
                start += size

    # ------------------------------------------------------------------ fitting
    def fit(self, objective: TrainingObjective) -> KFACSolver:
        super().fit(objective)
        task = objective.task
        self.curvature_ = self._resolve_curvature(objective)
        self.weight_decay_ = task.weight_decay
        layers = kronecker_layers(task)
        uncovered = uncovered_params(task, layers)
        if uncovered:
            warnings.warn(
                f"{type(self).__name__}: parameters {uncovered[:6]} belong to no Linear/Conv2d/Embedding layer; "
                "they get a diagonal approximation of the curvature (no Kronecker factors).", stacklevel=2)
        self.specs_ = layer_specs(task, layers)
        n = objective.n
        A = {s.name: torch.zeros(s.cols, s.cols, dtype=torch.float64) for s in self.specs_}
        S = {s.name: torch.zeros(s.d_out, s.d_out, dtype=torch.float64) for s in self.specs_}
        positions = {s.name: 0 for s in self.specs_}
        slices = task.param_slices()
        diag = {u: torch.zeros(slices[u].stop - slices[u].start, dtype=torch.float64) for u in uncovered}
        for ios, U in self._samples(objective, layers, uncovered, "K-FAC covariances"):
            for k, io_k in enumerate(ios):
                for name, io in io_k.items():
                    d = io.delta.reshape(-1, io.delta.shape[-1]).to(torch.float64)
                    S[name] += d.T @ d
                    if k == 0:
                        a = io.a.reshape(-1, io.a.shape[-1]).to(torch.float64)
                        A[name] += a.T @ a
                        positions[name] += a.shape[0]
            if U is not None:
                offset = 0
                for u in uncovered:
                    size = diag[u].numel()
                    diag[u] += U[:, :, offset: offset + size].to(torch.float64).pow(2).sum((0, 1))
                    offset += size
        self.factors_ = {}
        for s in self.specs_:
            sA, QA = _sym_eigh(A[s.name] / max(positions[s.name], 1))
            sS, QS = _sym_eigh(S[s.name] / n)
            self.factors_[s.name] = {"QA": QA, "QS": QS, "eigenvalues": torch.outer(sS, sA)}
        if self.eigenvalue_correction and self.specs_:
            self._correct_eigenvalues(objective, layers)
        for s in self.specs_:
            f = self.factors_[s.name]
            f["damping"] = torch.tensor(self._resolve_damping(f["eigenvalues"]), dtype=torch.float64)
        self.diagonal_ = {}
        for u in uncovered:
            d = diag[u] / n
            self.diagonal_[u] = {"slice": [slices[u].start, slices[u].stop], "values": d,
                                 "damping": torch.tensor(self._resolve_damping(d), dtype=torch.float64)}
        return self

    def _resolve_damping(self, eigenvalues: torch.Tensor) -> float:
        if self.damping is not None:
            return float(self.damping)
        lam = 0.1 * float(eigenvalues.mean())
        return lam if lam > 0 else float(torch.finfo(torch.float64).eps)

    def _correct_eigenvalues(self, objective: TrainingObjective, layers: dict[str, nn.Module]) -> None:
        """EK-FAC: ``Λ*[a, b] = (1/n) Σ_{i,k} (Q_Sᵀ G_ik Q_A)[a, b]²`` (second pass over the data)."""
        dtype = objective.dtype
        lam = {s.name: torch.zeros(s.d_out, s.cols, dtype=torch.float64) for s in self.specs_}
        rot = {name: (f["QS"].to(dtype), f["QA"].to(dtype)) for name, f in self.factors_.items()}
        for ios, _ in self._samples(objective, layers, [], "EK-FAC eigenvalues"):
            for io_k in ios:
                for name, io in io_k.items():
                    QS, QA = rot[name]
                    d_rot = io.delta @ QS  # [B, T, d_out]: (Q_Sᵀ δ_t) for every position
                    a_rot = io.a @ QA  # [B, T, d_in(+1)]
                    if d_rot.shape[1] == 1:  # one position: (Q_Sᵀ δ ãᵀ Q_A)² = (Q_Sᵀδ)² ((Q_Aᵀã)²)ᵀ, a matmul
                        lam[name] += (d_rot[:, 0].to(torch.float64).pow(2).T
                                      @ a_rot[:, 0].to(torch.float64).pow(2))
                        continue
                    for c0 in range(0, d_rot.shape[0], self.chunk):
                        R = torch.einsum("bto,bti->boi", d_rot[c0: c0 + self.chunk], a_rot[c0: c0 + self.chunk])
                        lam[name] += R.to(torch.float64).pow(2).sum(0)
        for name in lam:
            self.factors_[name]["eigenvalues"] = lam[name] / objective.n

    # ------------------------------------------------------------------ solving
    def _require_factors(self) -> None:
        if not self.specs_ and not self.diagonal_:
            raise WherefromError(f"The {self.name} solver must be fitted (or loaded) before solve().")

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """``(F̂ + (wd + λ) I)⁻¹ V`` for ``V`` ``[m, p]``, layer by layer."""
        return self._apply(V, power=-1.0)

    def _apply(self, V: torch.Tensor, power: float) -> torch.Tensor:
        self._require_factors()
        out = torch.zeros_like(V)
        wd = self.weight_decay_
        for s in self.specs_:
            f = self.factors_[s.name]
            QS, QA = f["QS"].to(V.dtype), f["QA"].to(V.dtype)
            denom = (f["eigenvalues"] + wd + f["damping"]).pow(power).to(V.dtype)
            M = s.to_matrix(V)
            R = QS.T @ M @ QA  # Q_Sᵀ V Q_A
            s.write(out, QS @ (R * denom) @ QA.T)
        for d in self.diagonal_.values():
            a, b = d["slice"]
            out[:, a:b] = V[:, a:b] * (d["values"] + wd + d["damping"]).pow(power).to(V.dtype)
        return out

    def dense(self, p: int | None = None) -> torch.Tensor:
        """The approximated curvature ``F̂ + (wd + λ)I`` as a dense ``[p, p]`` matrix (small models; tests)."""
        p = p if p is not None else self._require_fit().p
        return self._apply(torch.eye(p, dtype=torch.float64), power=1.0)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        self._require_factors()
        return {"specs": [s.as_dict() for s in self.specs_], "factors": self.factors_, "diagonal": self.diagonal_,
                "weight_decay": self.weight_decay_, "curvature": self.curvature_,
                "eigenvalue_correction": self.eigenvalue_correction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if bool(state["eigenvalue_correction"]) != self.eigenvalue_correction:
            raise WherefromError("Saved factors are of the other kind (kfac vs ekfac).")
        self.specs_ = [LayerSpec.from_dict(d) for d in state["specs"]]
        self.factors_ = state["factors"]
        self.diagonal_ = state["diagonal"]
        self.weight_decay_ = float(state["weight_decay"])
        self.curvature_ = state["curvature"]


@register_solver("ekfac")
class EKFACSolver(KFACSolver):
    """K-FAC with the eigenvalue correction of George et al. (2018) (one more pass over the data)."""

    eigenvalue_correction = True


def _pseudo_loss(v: torch.Tensor):
    """``f(o) = o · v`` per example: its output gradient is ``v`` (a column of ``L_i``), so ``δ = J_iᵀ l_ik``."""

    def fn(outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        return (outputs * v.to(outputs.dtype)).sum(-1)

    return fn


def _augmented_pseudo_loss(outputs: torch.Tensor, aug: Any) -> torch.Tensor:
    """``o · l`` with ``l`` carried in the batch (``aug = (batch, l)``) so that vmap slices it per example."""
    return (outputs * aug[1].to(outputs.dtype)).sum(-1)


def _label_loss(loss_fn):
    """The task loss on an augmented batch ``(batch, unused)``."""

    def fn(outputs: torch.Tensor, aug: Any) -> torch.Tensor:
        return loss_fn(outputs, aug[0])

    return fn
