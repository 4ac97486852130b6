"""The structured curvature path (samples taken once, matrix products) against the generic HVP path it replaces and
against brute-force references: dense matrices, products, solves; Linear, Conv1d/Conv2d, Embedding, LayerNorm,
with and without bias."""

import pytest
import torch
from torch import nn

import wherefrom as wf
from curvature_refs import dense_ggn, per_example_grads
from layer_models import all_layers_problem, dense_hessian
from wherefrom.curvature import CGSolver, ExplicitSolver, TrainingObjective
from wherefrom.curvature.structured import StructuredCurvature
from wherefrom.errors import WherefromError

TOL = {"rtol": 1e-10, "atol": 1e-12}


class ConvNet(nn.Module):
    """Conv2d (with or without bias) → tanh → Linear, on 1×5×5 images."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, bias=bias)
        self.head = nn.Linear(18, 3, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x.reshape(-1, 1, 5, 5))).flatten(1))


class EmbeddingNet(nn.Module):
    """Embedding (vocabulary 20, 3 tokens, mean-pooled) → Linear: a block with few positions (factored form)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 4)
        self.head = nn.Linear(4, 5, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(x.long())).mean(1))


def _problem(kind: str, bias: bool = True, n: int = 13):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if kind in ("all", "padding"):  # AllLayers has Linear layers with and without bias
        model, (X, y), _ = all_layers_problem(n=n, padding_idx=0 if kind == "padding" else None)
        return model, X, y
    if kind == "conv":
        model, X = ConvNet(bias), torch.randn(n, 25, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (n,), generator=g)
    elif kind == "embedding":
        model, X = EmbeddingNet(bias), torch.randint(0, 20, (n, 3), generator=g).double()
        y = torch.randint(0, 5, (n,), generator=g)
    else:  # "lr": a model that is affine in its parameters
        model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4, bias=bias))
        X, y = torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)
    return model.double(), X, y


def _objectives(kind, bias=True, curvature="ggn", wd=0.1, params=None, **options):
    model, X, y = _problem(kind, bias)
    task = wf.Task(model, weight_decay=wd, params=params)
    loader = wf.data.as_loader((X, y), batch_size=5)
    fast = TrainingObjective(task, loader, task.state(), curvature=curvature, **options)
    slow = TrainingObjective(task, loader, task.state(), curvature=curvature, structured=False)
    return fast, slow, task, X, y


@pytest.mark.parametrize(("kind", "bias"), [("all", True), ("conv", True), ("conv", False), ("embedding", True),
                                            ("embedding", False)])
@pytest.mark.parametrize("prefer", [None, "factored", "rows"])
def test_structured_ggn_equals_the_generic_products_and_the_jacobian_reference(kind, bias, prefer):
    fast, slow, task, X, y = _objectives(kind, bias)
    op = StructuredCurvature.for_objective(fast, prefer=prefer)
    assert op is not None
    fast._structured = op
    V = torch.randn(7, fast.p, dtype=torch.float64)
    torch.testing.assert_close(fast.hvp(V), slow.hvp(V), **TOL)
    H = fast.dense()
    assert torch.equal(H, H.T)  # the closed form is exactly symmetric
    torch.testing.assert_close(H, slow.dense(), **TOL)
    torch.testing.assert_close(H, dense_ggn(task, X, y), **TOL)


class OneTokenNet(nn.Module):
    """Embedding of one token (a one-position block stored transposed) and a bias-free Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.head = nn.Linear(4, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(x.long()[:, 0])))


def test_closed_form_between_one_position_layers_stored_transposed_equals_the_jacobian_reference():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    model = OneTokenNet().double()
    X, y = torch.randint(0, 7, (11, 1), generator=g).double(), torch.randint(0, 3, (11,), generator=g)
    task = wf.Task(model, weight_decay=0.1)
    loader = wf.data.as_loader((X, y), batch_size=4)
    fast = TrainingObjective(task, loader, task.state(), curvature="ggn")
    op = fast.structured_operator()
    assert op is not None and all(part.delta.shape[2] == 1 for part in op._batches[0].kronecker)
    assert op._batches[0].kronecker[0].spec.transposed
    H = fast.dense()
    assert torch.equal(H, H.T)
    torch.testing.assert_close(H, dense_ggn(task, X, y), **TOL)


def test_structured_ggn_with_a_padding_index_equals_the_reverse_mode_reference():
    # torch zeroes the gradient of the padding row in reverse mode only, so the forward-over-reverse generic
    # product is not symmetric there; the samples (reverse mode) agree with the reverse-mode Jacobians.
    fast, _slow, task, X, y = _objectives("padding")
    torch.testing.assert_close(fast.dense(), dense_ggn(task, X, y), **TOL)


@pytest.mark.parametrize("curvature", ["fisher", "empirical_fisher"])
@pytest.mark.parametrize("kind", ["all", "embedding"])
def test_structured_fisher_products_equal_the_generic_ones(curvature, kind):
    fast, slow, task, X, y = _objectives(kind, curvature=curvature)
    V = torch.randn(4, fast.p, dtype=torch.float64)
    torch.testing.assert_close(fast.hvp(V), slow.hvp(V), **TOL)
    torch.testing.assert_close(fast.dense(), slow.dense(), **TOL)
    assert fast.structured_operator() is not None
    if curvature == "empirical_fisher":
        G = per_example_grads(task, X, y)
        ref = G.T @ G / len(X) + task.weight_decay * torch.eye(fast.p, dtype=torch.float64)
        torch.testing.assert_close(fast.dense(), ref, **TOL)


@pytest.mark.parametrize("bias", [True, False])
def test_closed_form_hessian_of_an_affine_model_equals_autograd(bias):
    fast, slow, task, X, y = _objectives("lr", bias, curvature="hessian")
    assert fast.structured_operator() is not None
    H = fast.dense()
    torch.testing.assert_close(H, dense_hessian(task, X, y), **TOL)
    torch.testing.assert_close(H, slow.dense(), **TOL)
    V = torch.randn(3, fast.p, dtype=torch.float64)
    torch.testing.assert_close(fast.hvp(V), slow.hvp(V), **TOL)


@pytest.mark.parametrize("curvature", ["hessian", "fisher"])
def test_single_layer_products_and_the_switch_to_the_dense_matrix_equal_the_generic_products(curvature):
    fast, slow, *_ = _objectives("lr", curvature=curvature)
    op = StructuredCurvature.for_objective(fast, prefer="factored")  # the Fisher's one sample would prefer rows
    assert op is not None and len(op._batches) == 1  # the kept batches are grouped
    fast._structured = op
    # the output curvature M_b is formed when d_out <= 2K (the GGN's 3 roots), not for the Fisher's one sample
    assert (op._batches[0].kronecker[0].M is not None) == (curvature == "hessian")
    V = torch.randn(3, fast.p, dtype=torch.float64)
    torch.testing.assert_close(fast.hvp(V), slow.hvp(V), **TOL)
    assert op._dense_data is None  # three vectors do not pay for the dense matrix ...
    W = torch.randn(200, fast.p, dtype=torch.float64)
    torch.testing.assert_close(fast.hvp(W), slow.hvp(W), **TOL)
    assert op._dense_data is not None  # ... two hundred do
    torch.testing.assert_close(fast.hvp(V), slow.hvp(V), **TOL)
    torch.testing.assert_close(fast.dense(), slow.dense(), **TOL)


def test_last_layer_hessian_is_structured_and_exact():
    fast, _slow, task, X, y = _objectives("conv", curvature="hessian", params="head")
    assert fast.structured_operator() is not None
    torch.testing.assert_close(fast.dense(), dense_hessian(task, X, y), **TOL)


def test_hessian_of_a_nonlinear_model_keeps_the_generic_path():
    fast, _slow, task, X, y = _objectives("conv", curvature="hessian")
    assert fast.structured_operator() is None
    torch.testing.assert_close(fast.dense(), dense_hessian(task, X, y), **TOL)
    strict, *_ = _objectives("conv", curvature="hessian", structured=True)
    with pytest.raises(WherefromError, match="no structured form"):
        strict.hvp(torch.zeros(1, strict.p, dtype=torch.float64))


def test_samples_beyond_the_budget_are_taken_again_for_each_product():
    fast, slow, *_ = _objectives("all", structured_budget_mb=0.0)
    op = fast.structured_operator()
    assert op is not None and not op.cached
    V = torch.randn(5, fast.p, dtype=torch.float64)
    torch.testing.assert_close(fast.hvp(V), slow.hvp(V), **TOL)
    torch.testing.assert_close(fast.dense(), slow.dense(), **TOL)


def test_explicit_and_cg_solves_on_the_structured_path_equal_the_generic_solves():
    fast, slow, *_ = _objectives("all")
    V = torch.randn(6, fast.p, dtype=torch.float64)
    ref = ExplicitSolver(damping=1e-2).fit(slow).solve(V)
    torch.testing.assert_close(ExplicitSolver(damping=1e-2).fit(fast).solve(V), ref, **TOL)
    cg = CGSolver(damping=1e-2, tol=1e-12, max_iter=500).fit(fast)
    torch.testing.assert_close(cg.solve(V), ref, rtol=1e-8, atol=1e-10)


def test_cg_stops_each_column_at_its_own_tolerance_and_reaches_the_explicit_solution():
    fast, slow, *_ = _objectives("embedding")
    V = torch.randn(5, fast.p, dtype=torch.float64)
    V[0] *= 1e-3  # scale does not matter (relative residuals) ...
    V[1] = torch.linalg.eigh(slow.dense()).eigenvectors[:, -1]
    ref = ExplicitSolver(damping=1e-2).fit(slow).solve(V)
    cg = CGSolver(damping=1e-2, tol=1e-10, max_iter=500).fit(fast)
    X = cg.solve(V)
    torch.testing.assert_close(X, ref, rtol=1e-7, atol=1e-9)
    # ... but structure does: column 1 is an eigenvector of C, solved in one step
    assert int(cg.column_iterations_[1]) == 1 and int(cg.column_iterations_.max()) == cg.iterations_ > 5
    assert cg.products_ == int(cg.column_iterations_.sum()) < V.shape[0] * cg.iterations_
    assert float(cg.residuals_.max()) <= 1e-10
    hist = cg.residual_history_
    assert hist.shape == (cg.iterations_ + 1, 5) and torch.allclose(hist[0], torch.ones(5, dtype=torch.float64))
    true = (V - (fast.hvp(X) + 1e-2 * X)).norm(dim=1) / V.norm(dim=1)
    assert float(true.max()) <= 1e-9


def test_cg_warm_start_and_preconditioning_reach_the_same_solution_with_fewer_iterations():
    fast, slow, *_ = _objectives("all")
    V = torch.randn(4, fast.p, dtype=torch.float64)
    ref = ExplicitSolver(damping=1e-2).fit(slow).solve(V)
    cold = CGSolver(damping=1e-2, tol=1e-10, max_iter=500, warm_start=True).fit(fast)
    torch.testing.assert_close(cold.solve(V), ref, rtol=1e-7, atol=1e-9)
    first = cold.iterations_
    cold.damping = 1.1e-2  # a nearby damping: the previous solution is a good start
    ref2 = ExplicitSolver(damping=1.1e-2).fit(slow).solve(V)
    torch.testing.assert_close(cold.solve(V), ref2, rtol=1e-7, atol=1e-9)
    assert cold.iterations_ < first
    # preconditioned by the exact inverse, PCG converges in one step; by K-FAC, it still reaches the exact solve
    pcg = CGSolver(damping=1e-2, tol=1e-10, max_iter=500, preconditioner="explicit").fit(fast)
    torch.testing.assert_close(pcg.solve(V), ref, rtol=1e-7, atol=1e-9)
    assert pcg.iterations_ == 1
    kfac = CGSolver(damping=1e-2, tol=1e-10, max_iter=500, preconditioner="kfac").fit(fast)
    torch.testing.assert_close(kfac.solve(V), ref, rtol=1e-7, atol=1e-9)
    with pytest.raises(WherefromError, match="x0"):
        cold.solve(V, x0=torch.zeros(1, fast.p, dtype=torch.float64))


def _welsch(outputs, batch):
    """A robust regression loss that is not convex in the outputs (its output Hessian is indefinite far away)."""
    return (1 - torch.exp(-(outputs - batch[1]).pow(2))).sum(-1)


def test_hessian_of_an_affine_model_with_a_nonconvex_loss_is_not_its_clipped_gauss_newton_matrix():
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, 2, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    task = wf.Task(nn.Linear(5, 2).double(), loss_fn=_welsch, weight_decay=0.0)
    obj = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=5), task.state(), curvature="hessian")
    state = task.state()
    ref = torch.func.hessian(lambda t: task.per_example(_welsch, t, state, (X, y)).sum())(task.flat_params(state)) / 12
    assert float(torch.linalg.eigvalsh(ref)[0]) < -0.1  # the case: an indefinite Hessian
    torch.testing.assert_close(obj.dense(), ref, **TOL)
    V = torch.randn(3, obj.p, dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(V), V @ ref, **TOL)
    # a convex loss written by hand keeps the structured path, also in float32 (Λ_i rounded there: tiny negatives)
    X32, labels = X.float() * 3, torch.randint(0, 2, (12,), generator=g)
    task32 = wf.Task(nn.Linear(5, 2), loss_fn=lambda o, b: nn.functional.cross_entropy(o, b[1], reduction="none"))
    obj32 = TrainingObjective(task32, wf.data.as_loader((X32, labels), batch_size=5), task32.state(),
                              curvature="hessian")
    assert obj32.structured_operator() is not None


class TiedNet(nn.Module):
    """An embedding whose weight is also the bias-free output head (tied): the head's share of the tied layer's
    samples has the output gradient in the role of the input, so it differs from probe to probe."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(5, 3)
        self.head = nn.Linear(3, 5, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.emb(x.long()[:, 0])))


@pytest.mark.parametrize("prefer", [None, "factored"])
def test_structured_ggn_of_tied_weights_equals_the_jacobian_reference(prefer):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    X, y = torch.randint(0, 5, (13, 1), generator=g).double(), torch.randint(0, 5, (13,), generator=g)
    task = wf.Task(TiedNet().double(), weight_decay=0.1)
    fast = TrainingObjective(task, wf.data.as_loader((X, y), batch_size=5), task.state(), curvature="ggn")
    fast._structured = StructuredCurvature.for_objective(fast, prefer=prefer)
    assert fast._structured is not None
    ref = dense_ggn(task, X, y)
    torch.testing.assert_close(fast.dense(), ref, **TOL)
    V = torch.randn(3, fast.p, dtype=torch.float64)
    torch.testing.assert_close(fast.hvp(V), V @ ref, **TOL)
    idx = torch.tensor([4, 0, 7])
    torch.testing.assert_close(fast.minibatch_hvp(V, idx), V @ dense_ggn(task, X[idx], y[idx]), **TOL)


@pytest.mark.parametrize("curvature", ["ggn", "empirical_fisher"])
def test_a_single_selected_layer_stored_transposed_multiplies_like_the_reference(curvature):
    """One one-position layer stored ``[d_in, d_out]`` (an embedding) is the only block: the single-layer product."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    X, y = torch.randint(0, 7, (11, 1), generator=g).double(), torch.randint(0, 3, (11,), generator=g)
    task = wf.Task(OneTokenNet().double(), weight_decay=0.1, params="emb")
    loader = wf.data.as_loader((X, y), batch_size=4)
    fast = TrainingObjective(task, loader, task.state(), curvature=curvature)
    slow = TrainingObjective(task, loader, task.state(), curvature=curvature, structured=False)
    ref = slow.dense()
    if curvature == "ggn":
        torch.testing.assert_close(ref, dense_ggn(task, X, y), **TOL)
    V = torch.randn(3, fast.p, dtype=torch.float64)
    torch.testing.assert_close(fast.hvp(V), V @ ref, **TOL)
    torch.testing.assert_close(fast.dense(), ref, **TOL)
    idx = torch.tensor([1, 5, 2])
    torch.testing.assert_close(fast.minibatch_hvp(V, idx), slow.minibatch_hvp(V, idx), **TOL)
