"""Mini-batch curvature products from kept structured samples: what LiSSA's recursion multiplies by at every step.

For a mini-batch ``S`` of training examples and ``V`` ``[m, p]`` (``m`` right-hand sides),

    C_S V = Σ_{i∈S} Σ_k s_ik s_ikᵀ V,        s_ik = Σ_t δ_ikt ã_itᵀ per Kronecker layer

(:mod:`wherefrom.curvature.structured`; no ``1/|S|``, no weight decay). When every block is a one-position
Kronecker layer (``T = 1``: Linear layers on flat inputs, e.g. logistic regression and MLPs) the product is three
batched matrix products per layer, laid out so that the large ones are plain GEMMs:

    P_l = ã_S V_lᵀ                               [|S|, m·d_out]      (one GEMM, ``V_l`` the layer matrix)
    u_ik = Σ_l δ_iklᵀ P_l[i]                      [|S|, m, K]         (batched over examples)
    (C_S V)_l = Σ_i (Σ_k u_ik δ_ikl) ã_iᵀ         [m·d_out, cols]     (one GEMM)

For a single layer the middle step uses ``Λ_i = Σ_k δ_ik δ_ikᵀ`` (``[d_out, d_out]``, the output-space curvature of
example ``i``, formed once for the whole training set): ``W_i = P[i] Λ_i``. Every other layout (several positions,
explicit rows) uses the generic per-batch product on the rows of ``S``. Either way no forward or backward pass is
taken: the cost is ``2·|S|·m·p`` multiply-adds plus ``O(|S|·m·d_out·K)``.
"""

from __future__ import annotations

import torch

from wherefrom.curvature.structured import FactoredBatch, flat_matrix, product_over


class MinibatchProducts:
    """``C_S V`` for any subset ``S`` of the training examples from the samples of all of them (``whole``).

    Args:
        whole: the samples of the whole training set as one :class:`FactoredBatch` (rows in dataset order).
    """

    def __init__(self, whole: FactoredBatch) -> None:
        self.whole = whole
        self.one_position = not whole.rows and all(p.a.shape[1] == 1 for p in whole.kronecker)
        self._a = [p.a[:, 0].contiguous() for p in whole.kronecker] if self.one_position else []
        self._delta = [p.delta[:, :, 0].contiguous() for p in whole.kronecker] if self.one_position else []
        self._lam: torch.Tensor | None = None
        if self.one_position and len(whole.kronecker) == 1:
            d = self._delta[0]
            self._lam = d.transpose(1, 2) @ d  # Λ_i = Σ_k δ_ik δ_ikᵀ, [n, d_out, d_out]

    def product(self, V: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """``Σ_{i∈indices} Σ_k s_ik s_ikᵀ V`` for ``V`` ``[m, p]`` → ``[m, p]``."""
        indices = indices.to(V.device)
        if not self.one_position:
            return product_over([self.whole.subset(indices)], V)
        m = V.shape[0]
        out = torch.zeros_like(V)
        parts = self.whole.kronecker
        a = [x[indices] for x in self._a]
        P = []
        for part, a_l in zip(parts, a):
            Vl = part.spec.to_matrix(V)  # [m, d_out, cols]
            P.append((a_l @ Vl.reshape(-1, Vl.shape[2]).T).reshape(len(indices), m, -1))  # [B, m, d_out]
        if self._lam is not None:
            W = [torch.matmul(P[0], self._lam[indices])]
        else:
            delta = [x[indices] for x in self._delta]  # [B, K, d_out]
            u = sum(torch.bmm(P_l, d_l.transpose(1, 2)) for P_l, d_l in zip(P, delta))  # [B, m, K]
            W = [torch.bmm(u, d_l) for d_l in delta]  # type: ignore[arg-type]
        for part, a_l, W_l in zip(parts, a, W):
            acc = (W_l.reshape(len(indices), -1).T @ a_l).reshape(m, -1, a_l.shape[1])  # [m, d_out, cols]
            out[:, part.spec.indices().to(out.device)] += flat_matrix(part.spec, acc)
        return out
