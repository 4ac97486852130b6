"""Kronecker-eigenbasis curvature variants on the peers' logistic regression, against the exact scores.

For a single linear layer the Gauss-Newton matrix is known in closed form: with inputs ``ã_i = [x_i, 1]``
(``[65]``) and output Hessians ``H_i = diag(π_i) − π_i π_iᵀ`` (``[10, 10]``),
``F = (1/n) Σ_i H_i ⊗ ã_i ã_iᵀ`` (``[650, 650]``, output-major like ``fc.weight`` then ``fc.bias``). This script
forms ``F`` and scores every training example against every test point, ``g_iᵀ M g_j``, with ``M`` one of:

- ``exact``: ``(F + (wd + λ) I)⁻¹``;
- ``kfac``: ``S ⊗ A`` with ``S = mean H_i``, ``A = mean ã ãᵀ``;
- ``ekfac``: the same eigenbasis with the exact diagonal of ``F`` in it (what wherefrom computes);
- ``pydvl-estimator``: pyDVL's sample ``δ_i = Σ_c √π_ic (e_c − π_i)`` for both ``S`` and the diagonal (not the GGN);
- ``nearest-kronecker``: the eigenbasis of the Frobenius-nearest ``S ⊗ A`` to ``F`` (power iteration), exact diagonal;
- ``oracle-inverse-diagonal``: K-FAC's eigenbasis with the diagonal of the exact damped inverse in it;
- ``ekfac, damping × c``: EK-FAC with the damping scaled (a diagnostic, not a fair setting).

and prints LDS and agreement with the exact scores as ``compare.py`` computes them. It needs the prepared cache
(``prepare.py``) and runs in the project's environment: ``PEERS_CACHE=... python ekfac_variants.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from common import LAMBDA, load_context
from compare import agreement, lds


def main() -> None:
    torch.set_default_dtype(torch.float64)
    ctx = load_context("lr")
    W, b = ctx.state["fc.weight"].double(), ctx.state["fc.bias"].double()

    def layer(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = torch.cat([x.double().flatten(1), torch.ones(len(x), 1)], 1)
        pi = (a[:, :-1] @ W.T + b).softmax(-1)
        return a, pi, pi - torch.nn.functional.one_hot(y.long(), pi.shape[1]).double()

    a, pi, dz = layer(ctx.x_train, ctx.y_train)
    at, _, dzt = layer(ctx.x_test, ctx.y_test)
    n, damp = len(a), ctx.weight_decay + LAMBDA
    grads = torch.einsum("no,ni->noi", dz, a).reshape(n, -1)
    test_grads = torch.einsum("no,ni->noi", dzt, at).reshape(len(at), -1)
    H = torch.diag_embed(pi) - pi[:, :, None] * pi[:, None, :]
    p = H.shape[1] * a.shape[1]
    F = torch.einsum("nop,ni,nj->oipj", H, a, a).reshape(p, p) / n
    exact = torch.linalg.inv(F + damp * torch.eye(p))
    A = a.T @ a / n

    def kronecker_inverse(S: torch.Tensor, A: torch.Tensor, diagonal: str = "kfac", d: torch.Tensor | None = None,
                          scale: float = 1.0) -> torch.Tensor:
        sS, QS = torch.linalg.eigh(S)
        sA, QA = torch.linalg.eigh(A)
        lam = torch.outer(sS, sA)
        if diagonal == "exact":  # (Q_Sᵀ H_i Q_S)_oo (Q_Aᵀ ã_i)²_c, averaged
            lam = torch.einsum("po,npq,qo->no", QS, H, QS).T @ (a @ QA).pow(2) / n
        elif diagonal == "samples":
            lam = (d @ QS).pow(2).T @ (a @ QA).pow(2) / n
        Q = torch.kron(QS, QA)
        return Q @ torch.diag(1 / (lam.reshape(-1) + damp * scale)) @ Q.T

    S = H.mean(0)
    root = pi.sqrt()
    d_pydvl = root - root.sum(1, keepdim=True) * pi
    S_near, A_near = S.clone(), A.clone()
    for _ in range(30):
        S_near = torch.einsum("n,nop->op", torch.einsum("ni,ij,nj->n", a, A_near, a), H) / n / A_near.pow(2).sum()
        A_near = torch.einsum("n,ni,nj->ij", torch.einsum("nop,op->n", H, S_near), a, a) / n / S_near.pow(2).sum()
    Q = torch.kron(torch.linalg.eigh(S)[1], torch.linalg.eigh(A)[1])  # K-FAC's eigenbasis
    variants = {
        "exact": exact,
        "kfac": kronecker_inverse(S, A),
        "ekfac": kronecker_inverse(S, A, "exact"),
        "pydvl-estimator": kronecker_inverse(d_pydvl.T @ d_pydvl / n, A, "samples", d_pydvl),
        "nearest-kronecker": kronecker_inverse(S_near, A_near, "exact"),
        "oracle-inverse-diagonal": Q @ torch.diag(torch.diag(Q.T @ exact @ Q)) @ Q.T,
        **{f"ekfac, damping × {c:g}": kronecker_inverse(S, A, "exact", scale=c) for c in (0.25, 0.5, 2.0)},
    }
    # one sign for every variant: the one that puts the exact inverse in wherefrom's convention (positive = helpful)
    sign = float(np.sign(agreement((grads @ exact @ test_grads.T).numpy(), "lr", "hessian")))
    for name, M in variants.items():
        scores = sign * (grads @ M @ test_grads.T).numpy()
        print(f"{name:28s} LDS {lds(scores, 'lr', 'loss'):.4f}  agreement {agreement(scores, 'lr', 'hessian'):.4f}")


if __name__ == "__main__":
    main()
