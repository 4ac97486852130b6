"""CG and LiSSA inverse-HVPs equal the explicit solve; the objective's Hessian equals autograd's."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from wherefrom.curvature import CGSolver, ExplicitSolver, LissaSolver, TrainingObjective, make_solver


class RandomSPDObjective:
    """A stand-in objective whose curvature is ``A = (1/n) Σ_i A_i + wd·I`` with random PSD ``A_i``."""

    def __init__(self, p=30, n=40, wd=0.1, seed=0):
        gen = torch.Generator().manual_seed(seed)
        X = torch.randn(n, p, 3, generator=gen, dtype=torch.float64)
        self.parts = X @ X.transpose(1, 2) / 3  # [n, p, p] PSD
        self.wd, self.n, self.p = wd, n, p
        self.A = self.parts.mean(0) + wd * torch.eye(p, dtype=torch.float64)
        self.dtype, self.device = torch.float64, torch.device("cpu")

    def hvp(self, V, shift=0.0):
        return V @ self.A + shift * V

    def minibatch_hvp(self, V, idx):
        return V @ self.parts[idx].mean(0) + self.wd * V

    def dense(self, chunk=256):
        return self.A.clone()

    def top_eigenvalue(self, iters=30, seed=0):
        return float(torch.linalg.eigvalsh(self.A)[-1])


@pytest.fixture
def problem():
    obj = RandomSPDObjective()
    V = torch.randn(5, obj.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return obj, V


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_cg_equals_explicit_solve(problem, damping):
    obj, V = problem
    exact = torch.linalg.solve(obj.A + damping * torch.eye(obj.p, dtype=torch.float64), V.T).T
    cg = CGSolver(damping=damping, tol=1e-12).fit(obj)
    torch.testing.assert_close(cg.solve(V), exact, rtol=1e-8, atol=1e-8)
    assert cg.residuals_.max() < 1e-10 and cg.iterations_ <= obj.p + 5
    torch.testing.assert_close(ExplicitSolver(damping=damping).fit(obj).solve(V), exact)


def test_lissa_full_batch_equals_explicit_solve(problem):
    obj, V = problem
    damping = 0.05
    exact = torch.linalg.solve(obj.A + damping * torch.eye(obj.p, dtype=torch.float64), V.T).T
    lissa = LissaSolver(damping=damping, hvp_batch_size=obj.n).fit(obj)  # b = n: the deterministic Neumann series
    torch.testing.assert_close(lissa.solve(V), exact, rtol=1e-6, atol=1e-8)


def test_lissa_minibatch_converges_in_mean(problem):
    obj, V = problem
    damping = 0.05
    exact = torch.linalg.solve(obj.A + damping * torch.eye(obj.p, dtype=torch.float64), V.T).T
    approx = LissaSolver(damping=damping, hvp_batch_size=20, repeats=16, depth=300).fit(obj).solve(V)
    rel = (approx - exact).norm() / exact.norm()
    assert rel < 0.1, f"relative error {rel:.3f}"


def test_lissa_damping_means_the_same_as_other_solvers(problem):
    obj, V = problem
    for damping in (0.0, 0.5):
        exact = torch.linalg.solve(obj.A + damping * torch.eye(obj.p, dtype=torch.float64), V.T).T
        for scale in (None, 50.0):
            got = LissaSolver(damping=damping, hvp_batch_size=obj.n, scale=scale, depth=20000).fit(obj).solve(V)
            torch.testing.assert_close(got, exact, rtol=1e-5, atol=1e-7)


def test_lissa_too_small_scale_raises(problem):
    obj, V = problem
    with pytest.raises(wf.NonFiniteGradientError, match="diverged"):
        LissaSolver(damping=0.0, hvp_batch_size=obj.n, scale=1e-3, depth=500).fit(obj).solve(V)


def test_objective_hessian_equals_autograd_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    X, y = torch.randn(20, 5, dtype=torch.float64), torch.randint(0, 3, (20,))
    wd = 0.3
    task = wf.Task(model, weight_decay=wd)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=7), task.state())
    names = task.param_names
    params = tuple(p.detach() for p in model.parameters())

    def R(*ps):  # noqa: N802
        out = torch.func.functional_call(model, dict(zip(names, ps)), (X,))
        return nn.functional.cross_entropy(out, y) + 0.5 * wd * sum((p * p).sum() for p in ps)

    blocks = torch.autograd.functional.hessian(R, params)
    H = torch.cat([torch.cat([b.reshape(ps.numel(), qs.numel()) for b, qs in zip(row, params)], 1)
                   for row, ps in zip(blocks, params)], 0)
    torch.testing.assert_close(obj.dense(chunk=16), H)
    V = torch.randn(3, obj.p, dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(V), V @ H)


def test_unknown_solver_name_lists_choices():
    with pytest.raises(wf.UnknownNameError, match="'cg'"):
        make_solver("newton", damping=0.1)
    with pytest.raises(wf.UnknownNameError, match="Unknown solver 'newtonn'"):
        wf.InfluenceFunction(wf.Task(nn.Linear(2, 2)), solver="newtonn")


def test_cg_on_indefinite_curvature_raises_clear_error(problem):
    obj, V = problem
    obj.A = obj.A - 2.0 * float(torch.linalg.eigvalsh(obj.A)[0] + 1.0) * torch.eye(obj.p, dtype=torch.float64)
    with pytest.raises(wf.NonPositiveDefiniteError, match="curvature='ggn'"):
        CGSolver(damping=0.0).fit(obj).solve(V)


def test_lissa_scale_option_reaches_the_solver_not_the_score_scale():
    """``scale=`` of InfluenceFunction is LiSSA's recursion scale; the score scale stays ``1/n``."""
    torch.manual_seed(0)
    X, y = torch.randn(24, 3, dtype=torch.float64), torch.randint(0, 2, (24,))
    task = wf.Task(torch.nn.Linear(3, 2).double(), weight_decay=0.1)
    lissa = wf.InfluenceFunction(task, solver="lissa", damping=0.1, scale=10.0, depth=400, hvp_batch_size=24,
                                 progress=False)
    assert lissa.solver.scale == 10.0
    exact = wf.InfluenceFunction(task, solver="explicit", damping=0.1, progress=False).fit((X, y))
    torch.testing.assert_close(lissa.fit((X, y)).score((X[:4], y[:4])), exact.score((X[:4], y[:4])),
                               rtol=1e-5, atol=1e-8)  # 400 LiSSA steps: converged to ~1e-6


def test_lissa_warns_with_the_residual_and_depth_needed_when_not_converged(problem):
    obj, V = problem
    damping = 0.05
    short = LissaSolver(damping=damping, hvp_batch_size=obj.n, depth=5).fit(obj)
    with pytest.warns(UserWarning, match=r"LiSSA did not converge.*depth=5.*use depth=\d+") as record:
        short.solve(V)
    true_residual = float(((V - short.solve(V) @ (obj.A + damping * torch.eye(obj.p, dtype=torch.float64))).norm(dim=1)
                           / V.norm(dim=1)).max())
    assert f"{true_residual:.3g}" in str(record[0].message)  # the residual it reports is the true one
    needed = int(str(record[0].message).split("use depth=")[1].split(" ")[0])
    # the extrapolated depth is enough: the deterministic series (b = n) converges there without a warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enough = LissaSolver(damping=damping, hvp_batch_size=obj.n, depth=needed).fit(obj)
        enough.solve(V)
    assert float(enough.residuals_.max()) <= 0.1


def test_cg_solves_rows_stored_in_a_lower_precision_than_the_model():
    """Stored training features may be float32 (``Execution(dtype=...)``) for a float64 model: CG solves them in the
    wider dtype and returns their own."""
    torch.manual_seed(0)
    X, y = torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,))
    task = wf.Task(nn.Linear(4, 3).double(), weight_decay=0.1)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=8), task.state())
    V = torch.randn(3, obj.p, dtype=torch.float64)
    exact = torch.linalg.solve(obj.dense() + 0.01 * torch.eye(obj.p, dtype=torch.float64), V.T).T
    got = CGSolver(damping=0.01, tol=1e-10).fit(obj).solve(V.float())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-6)
    cosine = wf.InfluenceFunction(task, solver="cg", damping=0.01, similarity="cosine", tol=1e-10,
                                  execution=wf.Execution(dtype=torch.float32)).fit((X, y))
    ref = wf.InfluenceFunction(task, solver="explicit", damping=0.01, similarity="cosine",
                               execution=wf.Execution(dtype=torch.float32)).fit((X, y))
    torch.testing.assert_close(cosine.score((X[:3], y[:3])), ref.score((X[:3], y[:3])), rtol=1e-4, atol=1e-6)


def test_cg_zero_right_hand_side_from_a_nonzero_start_is_solved_at_once(problem):
    obj, V = problem
    V = V.clone()
    V[1] = 0.0
    x0 = torch.randn_like(V)
    exact = torch.linalg.solve(obj.A, V.T).T
    cg = CGSolver(tol=1e-10, max_iter=100).fit(obj)
    X = cg.solve(V, x0=x0)
    torch.testing.assert_close(X, exact, rtol=1e-7, atol=1e-9)
    assert torch.equal(X[1], torch.zeros(obj.p, dtype=V.dtype))  # the exact solution of a zero column
    assert float(cg.residuals_[1]) == 0.0 and int(cg.column_iterations_[1]) == 0 and cg.iterations_ < 100


@pytest.mark.parametrize("options", [{"rank": "many"}, ["rank", 3], {"rank": 2.5j}])
def test_cg_rejects_nonsense_preconditioner_options_clearly(problem, options):
    obj, _V = problem
    with pytest.raises(wf.WherefromError, match=r"nystrom|preconditioner_options"):
        CGSolver(preconditioner="nystrom", preconditioner_options=options).fit(obj)


@pytest.mark.parametrize("options", [{"depth": 0}, {"repeats": 0}, {"hvp_batch_size": 0}, {"scale": 0.0},
                                     {"scale": -1.0}, {"depth": 2.5}, {"scale_margin": 0.0}])
def test_lissa_rejects_nonsense_settings_clearly(problem, options):
    """No silent NaN (repeats=0), no bare traceback (depth=0, scale=0), no misleading 'diverged' (batch size 0)."""
    with pytest.raises(wf.WherefromError, match=next(iter(options))):
        LissaSolver(damping=0.1, **options)


def test_cg_and_lissa_solve_no_right_hand_sides(problem):
    obj, _V = problem
    V = torch.zeros(0, obj.p, dtype=torch.float64)
    for solver in (CGSolver(), LissaSolver(damping=0.1, depth=5)):
        assert solver.fit(obj).solve(V).shape == (0, obj.p)


def test_cg_stops_with_a_clear_error_when_a_product_is_not_finite(problem):
    """A curvature product with NaN (e.g. an overflow) must not run to max_iter and return NaN silently."""
    obj, V = problem
    obj.A = obj.A.clone()
    obj.A[3, 3] = float("nan")
    with pytest.raises(wf.NonFiniteGradientError, match="not finite"):
        CGSolver(damping=0.1, max_iter=50).fit(obj).solve(V)


def test_cg_refuses_cg_as_its_preconditioner_by_name_too():
    with pytest.raises(wf.WherefromError, match="cannot be preconditioned by another CG"):
        CGSolver(preconditioner="cg")
