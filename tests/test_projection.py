"""Random projections: JL inner-product preservation, block-by-block seeding, and projected gradient methods."""

import math

import pytest
import torch
from torch import nn

import wherefrom as wf
from wherefrom.errors import WherefromError
from wherefrom.gradients import collect_gradients
from wherefrom.projection import IdentityProjection, MatrixProjection, RandomProjection, make_projection

KINDS = ["gaussian", "rademacher", "sparse"]


def _variance(x: torch.Tensor, y: torch.Tensor, k: int, kind: str) -> float:
    """Exact variance of ⟨Pᵀx, Pᵀy⟩ for the kind's distribution (see the module docstring)."""
    v = float(x.dot(x) * y.dot(y) + x.dot(y) ** 2)
    if kind != "gaussian":
        v -= 2 * float((x * x * y * y).sum())
    return v / k


@pytest.mark.parametrize("kind", KINDS)
def test_unbiased_with_predicted_variance(kind):
    """Over many independent matrices the projected inner product has mean ⟨x,y⟩ and the JL variance."""
    torch.manual_seed(1)
    p, k, reps = 200, 32, 600
    X = torch.randn(2, p, dtype=torch.float64)
    X[1] += 0.5 * X[0]  # correlated pair
    proj = RandomProjection(k, kind, seed=3, nnz=4 if kind == "sparse" else 1, cache_mb=0)
    vals = torch.stack([(lambda Y: Y[0].dot(Y[1]))(proj.project(X, c)) for c in range(reps)])
    exact = float(X[0].dot(X[1]))
    var = _variance(X[0], X[1], k, kind)
    assert abs(float(vals.mean()) - exact) < 4.5 * math.sqrt(var / reps)
    ratio = float(vals.var()) / var
    assert 0.75 < ratio < 1.3, ratio


@pytest.mark.parametrize("kind", KINDS)
def test_all_pairs_within_jl_error(kind):
    """All pairwise inner products of N vectors are preserved within ε ≈ √(2·2 ln(2N²/δ)/k)·‖x‖‖y‖ (δ=1e-3),
    and the typical error shrinks like 1/√k."""
    torch.manual_seed(2)
    N, p = 40, 3000
    X = torch.randn(N, p, dtype=torch.float64) * torch.linspace(0.2, 3.0, p, dtype=torch.float64)
    X[N // 2:] += X[: N // 2]  # some strongly correlated pairs
    norms = X.norm(dim=1)
    exact = (X @ X.T) / (norms[:, None] * norms[None])
    rms = {}
    for k in (64, 1024):
        proj = RandomProjection(k, kind, seed=0, block_size=1000, nnz=8 if kind == "sparse" else 1)
        Y = proj.project(X)
        err = ((Y @ Y.T) / (norms[:, None] * norms[None]) - exact).abs()
        eps = math.sqrt(2 / k) * math.sqrt(2 * math.log(2 * N * N / 1e-3))
        assert float(err.max()) < eps, (k, float(err.max()), eps)
        rms[k] = float(err.pow(2).mean().sqrt())
    assert 2.5 < rms[64] / rms[1024] < 6.5  # √(1024/64) = 4


@pytest.mark.parametrize("kind", KINDS)
def test_blockwise_regeneration_is_reproducible(kind):
    """P is a function of (seed, kind, checkpoint, block) only: no dependence on batching, caching or on p."""
    torch.manual_seed(0)
    X = torch.randn(9, 50)
    a = RandomProjection(16, kind, seed=5, block_size=8, nnz=2)
    b = RandomProjection(16, kind, seed=5, block_size=8, nnz=2, cache_mb=0)
    full = a.project(X, 3)
    torch.testing.assert_close(b.project(X, 3), full, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([a.project(X[:4], 3), a.project(X[4:], 3)]), full)
    # the first 40 rows of P (5 blocks) are the same matrix whatever the total p
    P50 = a.matrix(50, 3, dtype=torch.float32)
    P40 = b.matrix(40, 3, dtype=torch.float32)
    torch.testing.assert_close(P50[:40], P40, rtol=0, atol=0)
    torch.testing.assert_close(X @ P50, full, rtol=1e-5, atol=1e-5)
    # different checkpoint / seed: an independent matrix
    assert not torch.allclose(a.project(X, 4), full)
    assert not torch.allclose(RandomProjection(16, kind, seed=6, block_size=8, nnz=2).project(X, 3), full)
    # the matrix does not depend on the data's dtype
    torch.testing.assert_close(a.project(X.double(), 3).float(), full, rtol=1e-5, atol=1e-5)


def test_entry_distributions():
    k, p = 24, 500
    G = RandomProjection(k, "gaussian", seed=1).matrix(p)
    assert abs(float(G.var() * k) - 1) < 0.05
    R = RandomProjection(k, "rademacher", seed=1).matrix(p)
    assert torch.allclose(R.abs(), torch.full_like(R, 1 / math.sqrt(k)))
    assert abs(float((R > 0).double().mean()) - 0.5) < 0.03
    S = RandomProjection(k, "sparse", seed=1, nnz=3).matrix(p)
    nz = S != 0
    assert (nz.sum(1) == 3).all()  # one bucket in each of the 3 segments of 8 outputs
    for seg in range(3):
        assert (nz[:, seg * 8:(seg + 1) * 8].sum(1) == 1).all()
    assert torch.allclose(S[nz].abs(), torch.full((3 * p,), 1 / math.sqrt(3), dtype=S.dtype))


def test_bad_input_errors():
    with pytest.raises(WherefromError, match="dim"):
        RandomProjection(0)
    with pytest.raises(wf.UnknownNameError):
        RandomProjection(8, "fourier")
    with pytest.raises(WherefromError, match="nnz"):
        RandomProjection(4, "sparse", nnz=5)
    with pytest.raises(WherefromError, match="2-d"):
        RandomProjection(4).project(torch.randn(3))
    with pytest.raises(WherefromError, match="needs a dimension"):
        make_projection("gaussian")
    assert isinstance(make_projection("identity"), IdentityProjection)


# ---------------------------------------------------------------------- projected gradient methods
def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    Xtr, ytr = torch.randn(30, 5, dtype=torch.float64), torch.randint(0, 3, (30,))
    Xte, yte = torch.randn(7, 5, dtype=torch.float64), torch.randint(0, 3, (7,))
    return model, (Xtr, ytr), (Xte, yte)


def test_projected_grad_dot_orthogonal_is_exact_and_random_is_within_jl():
    model, train, test = _problem()
    task = wf.Task(model)
    G = collect_gradients(task, wf.data.as_loader(train), task.state())
    Q = collect_gradients(task, wf.data.as_loader(test), task.state(), task.target_fn, "target")
    exact = G @ Q.T
    p = task.num_params
    Qmat, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64))
    ortho = wf.GradDot(task, projection=MatrixProjection(Qmat)).fit(train).score(test)
    torch.testing.assert_close(ortho, exact, rtol=1e-9, atol=1e-10)
    k = 4096
    for kind in KINDS:
        got = wf.GradDot(task, projection=RandomProjection(k, kind, nnz=4)).fit(train).score(test)
        bound = 4.5 * math.sqrt(2 / k) * G.norm(dim=1)[:, None] * Q.norm(dim=1)[None]
        assert ((got - exact).abs() <= bound).all(), kind
        assert torch.corrcoef(torch.stack([got.flatten(), exact.flatten()]))[0, 1] > 0.97


def test_projected_tracin_and_gradcos_match_explicit_projection():
    model, train, test = _problem()
    states = []
    for s in range(2):
        torch.manual_seed(10 + s)
        states.append({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()})
    task = wf.Task(model)
    proj = RandomProjection(12, "rademacher", seed=7)
    tr = wf.TracInCP(task, checkpoints=states, learning_rates=[0.5, 0.2], projection=proj).fit(train).score(test)
    expected = torch.zeros(30, 7, dtype=torch.float64)
    for c, (st, lr) in enumerate(zip(states, [0.5, 0.2])):
        P = proj.matrix(task.num_params, c)  # checkpoint c has its own matrix
        G = collect_gradients(task, wf.data.as_loader(train), st) @ P
        Q = collect_gradients(task, wf.data.as_loader(test), st, task.target_fn, "target") @ P
        expected += lr * G @ Q.T
    torch.testing.assert_close(tr, expected, rtol=1e-8, atol=1e-10)

    cos = wf.GradCos(task, projection=proj).fit(train).score(test)
    P = proj.matrix(task.num_params, 0)
    G = collect_gradients(task, wf.data.as_loader(train), task.state()) @ P
    Q = collect_gradients(task, wf.data.as_loader(test), task.state(), task.target_fn, "target") @ P
    ref = (G / G.norm(dim=1, keepdim=True)) @ (Q / Q.norm(dim=1, keepdim=True)).T
    torch.testing.assert_close(cos, ref, rtol=1e-8, atol=1e-10)


def test_projected_influence_orthogonal_hessian_equals_exact_if():
    """Curvature PᵀHP with a full-rank orthogonal P: exactly the influence function with the same damping."""
    model, train, test = _problem()
    task = wf.Task(model, weight_decay=0.01)
    p = task.num_params
    Qmat, _ = torch.linalg.qr(torch.randn(p, p, dtype=torch.float64))
    exact = wf.InfluenceFunction(task, solver="explicit", damping=1.0).fit(train).score(test)
    got = wf.ProjectedInfluence(task, projection=MatrixProjection(Qmat), curvature="hessian",
                                damping=1.0).fit(train).score(test)
    torch.testing.assert_close(got, exact, rtol=1e-7, atol=1e-10)


def test_projected_influence_fisher_matches_explicit_formula():
    model, train, test = _problem()
    task = wf.Task(model, weight_decay=0.02)
    pif = wf.ProjectedInfluence(task, proj_dim=10, projection="rademacher", damping=0.1, seed=2).fit(train)
    P = pif.projection.matrix(task.num_params, 0)
    Phi = collect_gradients(task, wf.data.as_loader(train), task.state()) @ P
    Psi = collect_gradients(task, wf.data.as_loader(test), task.state(), task.target_fn) @ P
    n = len(Phi)
    C = Phi.T @ Phi / n + (0.1 + 0.02) * torch.eye(10, dtype=torch.float64)
    torch.testing.assert_close(pif.score(test), Phi @ torch.linalg.inv(C) @ Psi.T / n, rtol=1e-8, atol=1e-10)
    with pytest.raises(wf.UnknownNameError):
        wf.ProjectedInfluence(task, curvature="ggn")
