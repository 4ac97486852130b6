"""K-FAC and EK-FAC: layer-wise Kronecker-factored curvature (Martens & Grosse 2015; George et al. 2018;
used for influence by Grosse et al. 2023), in the feature space of any gradient source.

For a Kronecker block (a layer, see :mod:`wherefrom.layers`) with per-position inputs ``ã_t`` (``[d_in(+1)]``) and
output gradients ``δ_t`` (``[d_out]``) — projected ones for LoGra's features — the per-example gradient matrix is
``G = Σ_t δ_t ã_tᵀ`` (``[d_out, d_in(+1)]``, laid out by the block's :class:`~wherefrom.layers.LayerSpec`). The
block's curvature is ``F_l = (1/n) Σ_i Σ_k vec(G_ik) vec(G_ik)ᵀ`` over the curvature samples ``k`` of
:mod:`wherefrom.curvature.samples` (exact GGN by default; ``"fisher"``, ``"empirical_fisher"``).

K-FAC approximates ``F_l ≈ S ⊗ A`` with ``A = (1/N) Σ_{i,t} ã_t ã_tᵀ`` (``N`` the real positions, ``nT`` without
padding; averaged over the probes ``k`` where their inputs differ, as for a tied weight's transposed member)
and ``S = (1/n) Σ_{i,k,t} δ_t δ_tᵀ`` (exact for ``T = 1`` when ``δδᵀ`` and ``ããᵀ`` are uncorrelated, e.g.
one linear layer with a constant output Hessian). With eigendecompositions ``A = Q_A diag(σ_A) Q_Aᵀ``,
``S = Q_S diag(σ_S) Q_Sᵀ`` (columns are eigenvectors, computed in float64):

    (F_l + (wd + λ_l) I)⁻¹ V = Q_S [ (Q_Sᵀ V Q_A) ⊘ (Λ + wd + λ_l) ] Q_Aᵀ,

with ``Λ = σ_S σ_Aᵀ`` (K-FAC) or, for EK-FAC, the eigenvalue correction ``Λ*[a, b] = (1/n) Σ_{i,k}
(Q_Sᵀ G_ik Q_A)[a, b]²``, the exact diagonal of ``F_l`` in the Kronecker eigenbasis (a second data pass).

Dense blocks (LayerNorm, fallback parameters, a projected block) get the diagonal ``(1/n) Σ_{i,k} s_ik²`` of the
same curvature; a warning names the fallback parameters (no registered layer type). Blocks are independent (the
approximation is block-diagonal). ``damping`` ``λ_l`` is per block: a number, or ``"auto"`` (``None``) =
``0.1 · mean(Λ)`` of the block (:mod:`wherefrom.curvature.damping`).
"""

from __future__ import annotations

import logging
import numbers
import warnings
from typing import Any

import torch

from wherefrom.curvature.base import Preconditioner, register_solver
from wherefrom.curvature.damping import resolve_damping
from wherefrom.curvature.samples import share_inputs
from wherefrom.errors import WherefromError
from wherefrom.layers.base import LayerSpec

log = logging.getLogger(__name__)


def _sym_eigh(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    M = M.to(torch.float64)
    evals, evecs = torch.linalg.eigh((M + M.T) / 2)
    return evals.clamp_min(0.0), evecs.contiguous()  # row-major, as after saving and loading (same products)


def _unique_bytes(probes: list[dict[str, tuple[torch.Tensor, torch.Tensor]]]) -> int:
    """Bytes held by the distinct tensors of one batch's samples (probes share their inputs ``ã``)."""
    seen: dict[int, int] = {}
    for probe in probes:
        for a, d in probe.values():
            for t in (a, d):
                seen[id(t)] = t.numel() * t.element_size()
    return sum(seen.values())


@register_solver("kfac")
class KFACSolver(Preconditioner):
    """Block-diagonal Kronecker-factored inverse curvature; :class:`EKFACSolver` adds the eigenvalue correction.

    Args:
        damping: ``λ`` per block (added with ``wd``): a number, ``"auto"`` / ``None`` (``0.1·mean(Λ_l)``) or
            ``relative(f)``.
        curvature: ``"ggn"``, ``"fisher"`` or ``"empirical_fisher"``; ``None`` follows the space (whose
            ``"hessian"`` becomes ``"ggn"``, the Gauss-Newton part, which is what Kronecker factors describe).
        chunk: examples per block when rotating per-example gradients (bounds memory in the EK-FAC pass).
        progress: show progress bars.
        sample_cache_gb: EK-FAC keeps the curvature samples ``(ã, δ)`` of the first pass in memory up to this many
            GB and computes the eigenvalue correction from them (no second pass over the data and the model);
            beyond it, the samples are recomputed in a second pass. ``0`` always recomputes.

    After ``fit``: ``factors_[layer]`` holds ``QA``, ``QS`` (eigenvectors as columns), ``eigenvalues``
    (``[d_out, d_in(+1)]``, the ``Λ`` used) and ``damping`` (the resolved ``λ_l``); ``diagonal_[block]`` the
    diagonal of each dense block (``index``, ``values``, ``damping``); ``data_passes_`` the passes over the data.
    """

    eigenvalue_correction = False
    allows_none_damping = True
    has_factors = True

    def __init__(self, damping: Any = 0.0, curvature: str | None = None, chunk: int = 64,
                 progress: bool | None = None, sample_cache_gb: float = 1.0) -> None:
        super().__init__(damping, curvature)
        if not isinstance(chunk, numbers.Integral) or chunk < 1:
            raise WherefromError(f"{type(self).__name__}'s chunk must be a whole number >= 1, got {chunk!r}.")
        if not float(sample_cache_gb) >= 0:
            raise WherefromError(f"{type(self).__name__}'s sample_cache_gb must be >= 0 (0: always recompute the "
                                 f"samples), got {sample_cache_gb!r}.")
        self.chunk = int(chunk)
        self.sample_cache_gb = float(sample_cache_gb)
        self.progress = progress
        self.specs_: list[LayerSpec] = []
        self.factors_: dict[str, dict[str, torch.Tensor]] = {}
        self.diagonal_: dict[str, dict[str, Any]] = {}
        self.weight_decay_: float = 0.0
        self.curvature_: str | None = None
        self.dim_: int = 0
        self.data_passes_: int = 0

    def _samples(self, space: Any, desc: str):
        self.data_passes_ += 1
        yield from space.samples(self.curvature_, desc)

    # ------------------------------------------------------------------ fitting
    def fit(self, objective: Any) -> KFACSolver:
        super().fit(objective)
        space = objective
        c = self.curvature or space.curvature
        self.curvature_ = "ggn" if c == "hessian" else c
        self.weight_decay_ = float(space.weight_decay)
        self.dim_ = space.p
        kron = [b for b in space.layout if b.spec is not None]
        dense = [b for b in space.layout if b.spec is None]
        fallback = [b.name for b in dense if b.fallback]
        if fallback:
            warnings.warn(
                f"{type(self).__name__}: parameters {fallback[:6]} belong to no registered layer type "
                "(wherefrom.layers); they get a diagonal approximation of the curvature (no Kronecker factors).",
                stacklevel=2)
        self.specs_ = [b.spec for b in kron]  # type: ignore[misc]
        dev = space.device
        A = {s.name: torch.zeros(s.cols, s.cols, dtype=torch.float64, device=dev) for s in self.specs_}
        S = {s.name: torch.zeros(s.d_out, s.d_out, dtype=torch.float64, device=dev) for s in self.specs_}
        positions = {s.name: 0 for s in self.specs_}
        diag = {b.name: torch.zeros(b.size, dtype=torch.float64, device=dev) for b in dense}
        cache: list[list[dict[str, tuple[torch.Tensor, torch.Tensor]]]] | None = (
            [] if self.eigenvalue_correction and self.sample_cache_gb > 0 else None)
        cached_bytes = 0
        for samples in self._samples(space, "K-FAC covariances"):
            probes = share_inputs([sample.kronecker for sample in samples])
            if cache is not None:
                cache.append(probes)
                cached_bytes += _unique_bytes(cache[-1])
                if cached_bytes > self.sample_cache_gb * 1e9:
                    log.info("EK-FAC: curvature samples exceed sample_cache_gb=%g; a second pass will recompute "
                             "them", self.sample_cache_gb)
                    cache = None
            # probes share their inputs, except a tied weight's transposed member (its inputs are output gradients,
            # one per probe): then A averages over the probes
            shared = {name: all(q[name][0] is a0 for q in probes) for name, (a0, _d) in probes[0].items()}
            for k, (sample, probe) in enumerate(zip(samples, probes)):
                for name, (a, d) in probe.items():
                    d = d.reshape(-1, d.shape[-1]).to(torch.float64)
                    S[name] += d.T @ d
                    if k == 0 or not shared[name]:
                        a = a.reshape(-1, a.shape[-1]).to(torch.float64)
                        A[name] += (a.T @ a) if shared[name] else (a.T @ a) / len(probes)
                    if k == 0:  # `a` was flattened to [B·T, cols] just above
                        positions[name] += sample.positions.get(name, a.shape[0])  # padding not counted
                for name, rows in sample.dense.items():
                    diag[name] += rows.to(torch.float64).pow(2).sum(0)
        n = space.n
        self.factors_ = {}
        for s in self.specs_:
            sA, QA = _sym_eigh(A[s.name] / max(positions[s.name], 1))
            sS, QS = _sym_eigh(S[s.name] / n)
            self.factors_[s.name] = {"QA": QA, "QS": QS, "eigenvalues": torch.outer(sS, sA)}
        if self.eigenvalue_correction and self.specs_:
            self._correct_eigenvalues(space, cache)
        self.diagonal_ = {b.name: {"index": b.index, "values": diag[b.name] / n} for b in dense}
        self._damping_changed()
        return self

    def _damping_changed(self) -> None:
        """Resolve ``λ_l`` of every block (relative damping: from the block's mean eigenvalue)."""
        for f in self.factors_.values():
            f["damping"] = torch.tensor(resolve_damping(self.damping, f["eigenvalues"].mean()), dtype=torch.float64,
                                        device=f["eigenvalues"].device)
        for d in self.diagonal_.values():
            d["damping"] = torch.tensor(resolve_damping(self.damping, d["values"].mean()), dtype=torch.float64,
                                        device=d["values"].device)

    def _correct_eigenvalues(self, space: Any,
                             cache: list[list[dict[str, tuple[torch.Tensor, torch.Tensor]]]] | None = None) -> None:
        """EK-FAC: ``Λ*[a, b] = (1/n) Σ_{i,k} (Q_Sᵀ G_ik Q_A)[a, b]²`` (from the cached samples, else a second pass).

        Samples of one batch that share their inputs ``ã`` (the probes of the exact GGN) rotate them once; with one
        position (``T = 1``) the sum over the probes ``k`` is ``Σ_k (Q_Sᵀδ_k)² ((Q_Aᵀã)²)ᵀ``, one matrix product.
        """
        lam = {s.name: torch.zeros(s.d_out, s.cols, dtype=torch.float64, device=space.device) for s in self.specs_}
        rot: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        batches = cache if cache is not None else (
            share_inputs([sample.kronecker for sample in samples])
            for samples in self._samples(space, "EK-FAC eigenvalues"))
        for probes in batches:
            names = probes[0].keys() if probes else ()
            for name in names:
                pairs = [probe[name] for probe in probes]
                a0, d0 = pairs[0]
                if name not in rot:
                    f = self.factors_[name]
                    rot[name] = (f["QS"].to(device=d0.device, dtype=d0.dtype),
                                 f["QA"].to(device=a0.device, dtype=a0.dtype))
                QS, QA = rot[name]
                rotated: dict[int, torch.Tensor] = {}  # ã @ Q_A, once per distinct input tensor
                squares: dict[int, torch.Tensor] = {}  # Σ_k (δ_k Q_S)² per input, for one position
                for a, d in pairs:
                    key = id(a)
                    if key not in rotated:
                        rotated[key] = a @ QA  # [B, T, d_in(+1)]
                    a_rot = rotated[key]
                    d_rot = d @ QS  # [B, T, d_out]: (Q_Sᵀ δ_t) for every position
                    if d_rot.shape[1] == 1:
                        sq = d_rot[:, 0].to(torch.float64).pow(2)
                        squares[key] = squares[key] + sq if key in squares else sq
                        continue
                    for c0 in range(0, d_rot.shape[0], self.chunk):
                        R = torch.einsum("bto,bti->boi", d_rot[c0: c0 + self.chunk], a_rot[c0: c0 + self.chunk])
                        lam[name] += R.to(torch.float64).pow(2).sum(0)
                for key, sq in squares.items():  # (Q_Sᵀ δ ãᵀ Q_A)² = (Q_Sᵀδ)² ((Q_Aᵀã)²)ᵀ, summed over the probes
                    lam[name] += sq.T @ rotated[key][:, 0].to(torch.float64).pow(2)
        for name in lam:
            self.factors_[name]["eigenvalues"] = lam[name] / space.n

    # ------------------------------------------------------------------ solving
    def _require_factors(self) -> None:
        if not self.specs_ and not self.diagonal_:
            raise WherefromError(f"The {self.name} solver must be fitted (or loaded) before solve().")

    def solve(self, V: torch.Tensor) -> torch.Tensor:
        """``(F̂ + (wd + λ) I)⁻¹ V`` for ``V`` ``[m, d]``, block by block."""
        return self._apply(V, power=-1.0)

    def _apply(self, V: torch.Tensor, power: float) -> torch.Tensor:
        self._require_factors()
        out = torch.zeros_like(V)
        wd = self.weight_decay_
        dev = V.device
        for s in self.specs_:
            f = self.factors_[s.name]
            QS, QA = f["QS"].to(device=dev, dtype=V.dtype), f["QA"].to(device=dev, dtype=V.dtype)
            denom = (f["eigenvalues"] + wd + f["damping"]).pow(power).to(device=dev, dtype=V.dtype)
            M = s.to_matrix(V)
            R = QS.T @ M @ QA  # Q_Sᵀ V Q_A
            s.write(out, QS @ (R * denom) @ QA.T)
        for d in self.diagonal_.values():
            idx = d["index"].to(dev)
            out[:, idx] = V[:, idx] * (d["values"] + wd + d["damping"]).pow(power).to(device=dev, dtype=V.dtype)
        return out

    def dense(self, p: int | None = None) -> torch.Tensor:
        """The approximated curvature ``F̂ + (wd + λ)I`` as a dense ``[d, d]`` matrix (small models; tests)."""
        dev = next(iter(self.factors_.values()))["QA"].device if self.factors_ else None
        return self._apply(torch.eye(p if p is not None else self.dim_, dtype=torch.float64, device=dev), power=1.0)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        self._require_factors()
        return {"specs": [s.as_dict() for s in self.specs_], "factors": self.factors_, "diagonal": self.diagonal_,
                "weight_decay": self.weight_decay_, "curvature": self.curvature_, "dim": self.dim_,
                "eigenvalue_correction": self.eigenvalue_correction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if bool(state["eigenvalue_correction"]) != self.eigenvalue_correction:
            raise WherefromError("Saved factors are of the other kind (kfac vs ekfac).")
        self.specs_ = [LayerSpec.from_dict(d) for d in state["specs"]]
        self.factors_ = state["factors"]
        self.diagonal_ = state["diagonal"]
        self.weight_decay_ = float(state["weight_decay"])
        self.curvature_ = state["curvature"]
        self.dim_ = int(state["dim"])
        self._damping_changed()


@register_solver("ekfac")
class EKFACSolver(KFACSolver):
    """K-FAC with the eigenvalue correction of George et al. (2018) (one more pass over the data)."""

    eigenvalue_correction = True
