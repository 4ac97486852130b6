"""wherefrom.compat.torch_influence: the seed's README example runs as written, against explicit Hessians."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import wherefrom as wf
from compat_refs import BruteForce, blobs, train_to_optimum
from wherefrom.compat import torch_influence as ti
from wherefrom.errors import LossReductionError, NonPositiveDefiniteError, WherefromError

# torch-influence's README, verbatim except the import lines ("from torch_influence import ...").
README_OBJECTIVE = '''
import torch
import torch.nn.functional as F
from wherefrom.compat.torch_influence import BaseObjective


class MyObjective(BaseObjective):

    def train_outputs(self, model, batch):
        return model(batch[0])

    def train_loss_on_outputs(self, outputs, batch):
        return F.cross_entropy(outputs, batch[1])  # mean reduction required

    def train_regularization(self, params):
        return 0.01 * torch.square(params.norm())

    # training loss by default taken to be
    # train_loss_on_outputs + train_regularization

    def test_loss(self, model, params, batch):
        return F.cross_entropy(model(batch[0]), batch[1])  # no regularization in test loss
'''

README_MODULE = '''
from wherefrom.compat.torch_influence import AutogradInfluenceModule


module = AutogradInfluenceModule(
    model=model,
    objective=MyObjective(),
    train_loader=train_loader,
    test_loader=test_loader,
    device=device,
    damp=0.001
)

# influence scores of training points 1, 2, and 3 on test point 0
scores = module.influences([1, 2, 3], [0])
'''

REG, DAMP = 0.01, 0.001  # the README's regulariser 0.01·‖θ‖² (weight decay 0.02) and damping


def _objective_class():
    namespace: dict = {}
    exec(compile(README_OBJECTIVE, "torch-influence README objective", "exec"), namespace)
    return namespace["MyObjective"]


@pytest.fixture(scope="module")
def problem():
    X, y = blobs(60, seed=1)
    Xt, yt = blobs(8, seed=2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    train_to_optimum(model, X, y, REG)
    train, test = TensorDataset(X, y), TensorDataset(Xt, yt)
    ref = BruteForce(model, X, y, REG)
    A = ref.hessian() + DAMP * torch.eye(ref.theta.numel(), dtype=torch.float64)
    return {
        "model": model, "train": train, "test": test, "ref": ref, "A": A, "n": len(X),
        "train_loader": DataLoader(train, batch_size=16, shuffle=True),  # shuffling is allowed, as in the seed
        "test_loader": DataLoader(test, batch_size=4),
        "objective": _objective_class()(),
        "G": ref.example_grads(X, y, with_reg=True),  # torch-influence's grad_z: ∇(ℓ_i + Ω)
        "Q": ref.example_grads(Xt, yt, with_reg=False),
    }


@pytest.fixture(scope="module")
def autograd_module(problem):
    return ti.AutogradInfluenceModule(problem["model"], problem["objective"], problem["train_loader"],
                                      problem["test_loader"], "cpu", damp=DAMP, check_eigvals=True)


def _expected(problem, train_idxs, test_idxs, A=None):
    """Brute force: ``∇(ℓ_i + Ω)ᵀ (H + λI)⁻¹ mean_j ∇ℓ_test_j / n``."""
    A = problem["A"] if A is None else A
    s = torch.linalg.solve(A, problem["Q"][test_idxs].mean(0))
    return problem["G"][train_idxs] @ s / problem["n"]


def test_readme_example_runs_and_equals_brute_force(problem):
    namespace = {"model": problem["model"], "train_loader": problem["train_loader"],
                 "test_loader": problem["test_loader"], "device": torch.device("cpu")}
    exec(compile(README_OBJECTIVE + README_MODULE, "torch-influence README", "exec"), namespace)
    scores = namespace["scores"]
    assert isinstance(namespace["module"], ti.BaseInfluenceModule)
    assert scores.shape == (3,) and scores.device.type == "cpu"
    torch.testing.assert_close(scores, _expected(problem, [1, 2, 3], [0]), rtol=1e-8, atol=1e-12)


def test_scores_equal_native_wherefrom_under_the_documented_mapping(problem, autograd_module):
    train_idxs, test_idxs = list(range(problem["n"])), [0, 3, 5]
    scores = autograd_module.influences(train_idxs, test_idxs)
    task = wf.Task(problem["model"], weight_decay=2 * REG)  # Ω = 0.01‖θ‖² is weight decay 0.02
    native = wf.InfluenceFunction(task, solver="explicit", damping=DAMP).fit(problem["train"])
    tau = native.score(TensorDataset(*problem["test"][test_idxs]))  # [n, 3], positive = helpful
    # general mapping: τ + ∇Ω(θ̂)ᵀ s_j / n, with s_j / n = native.query_features(test)[0][j]
    grad_reg = 2 * REG * task.flat_params(task.state())
    shift = native.query_features(TensorDataset(*problem["test"][test_idxs]))[0] @ grad_reg  # [3]
    torch.testing.assert_close(scores, (tau + shift).mean(1), rtol=1e-7, atol=1e-12)
    # at the optimum of the regularised objective the shift is −mean_i τ[i, j]: centred wherefrom scores
    torch.testing.assert_close(scores, (tau - tau.mean(0)).mean(1), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(scores, _expected(problem, train_idxs, test_idxs), rtol=1e-8, atol=1e-12)


def test_gradients_stest_and_inverse_hvp_against_brute_force(problem, autograd_module):
    ref = problem["ref"]
    X, y = problem["train"].tensors
    Xt, yt = problem["test"].tensors
    torch.testing.assert_close(autograd_module.train_loss_grad([4, 7, 9]),
                               ref.loss_grad(X[[4, 7, 9]], y[[4, 7, 9]], with_reg=True))
    q = autograd_module.test_loss_grad([1, 2, 6])
    torch.testing.assert_close(q, ref.loss_grad(Xt[[1, 2, 6]], yt[[1, 2, 6]], with_reg=False))
    torch.testing.assert_close(autograd_module.stest([1, 2, 6]), torch.linalg.solve(problem["A"], q))
    V = torch.randn(2, q.numel(), dtype=torch.float64)
    torch.testing.assert_close(autograd_module.inverse_hvp(V), torch.linalg.solve(problem["A"], V.T).T)
    s = autograd_module.stest([0])  # influences with a given s_test, one per column
    torch.testing.assert_close(autograd_module.influences([5, 6], [1], stest=s), _expected(problem, [5, 6], [0]))
    both = autograd_module.influences([5, 6], [0], stest=torch.stack([s, 2 * s]))
    torch.testing.assert_close(both[:, 1], 2 * both[:, 0])


def test_cg_agrees_with_autograd_within_its_tolerance(problem, autograd_module):
    full_batch = DataLoader(problem["train"], batch_size=60)  # one Hessian-vector product per CG iteration
    args = (problem["model"], problem["objective"], full_batch, problem["test_loader"], "cpu")
    exact = autograd_module.influences(list(range(20)), [2])
    loose = ti.CGInfluenceModule(*args, damp=DAMP).influences(list(range(20)), [2])  # scipy's default rtol 1e-5
    tight = ti.CGInfluenceModule(*args, damp=DAMP, rtol=1e-12, maxiter=500)
    torch.testing.assert_close(loose, exact, rtol=1e-3, atol=1e-4 * float(exact.abs().max()))
    torch.testing.assert_close(tight.influences(list(range(20)), [2]), exact, rtol=1e-8, atol=1e-12)
    assert float(tight.solver_.residuals_.max()) <= 1e-12


def test_gauss_newton_matches_the_explicit_gauss_newton_matrix(problem):
    full_batch = DataLoader(problem["train"], batch_size=60)
    args = (problem["model"], problem["objective"], full_batch, problem["test_loader"], "cpu")
    module = ti.CGInfluenceModule(*args, damp=DAMP, gnh=True, rtol=1e-12, maxiter=500)
    GN = problem["ref"].gauss_newton() + DAMP * torch.eye(problem["A"].shape[0], dtype=torch.float64)
    torch.testing.assert_close(module.influences([0, 1, 2, 3], [4]), _expected(problem, [0, 1, 2, 3], [4], A=GN),
                               rtol=1e-8, atol=1e-12)


def test_lissa_agrees_with_autograd_within_its_tolerance(problem):
    # Every training example is the same point, so every mini-batch Hessian equals the full Hessian: LiSSA is then
    # deterministic and must match the exact inverse up to its truncation error (1 − λ_min/scale)^depth.
    X, y = problem["train"].tensors
    dup = TensorDataset(X[:1].repeat(12, 1), y[:1].repeat(12))
    args = (problem["model"], problem["objective"], DataLoader(dup, batch_size=5), problem["test_loader"], "cpu")
    damp = 0.5
    exact = ti.AutogradInfluenceModule(*args, damp=damp).influences([0, 1], [3])
    ref = BruteForce(problem["model"], *dup.tensors, REG)
    A = ref.hessian() + damp * torch.eye(ref.theta.numel(), dtype=torch.float64)
    expected = ref.example_grads(*dup.tensors, with_reg=True)[:2] @ torch.linalg.solve(A, problem["Q"][3]) / 12
    torch.testing.assert_close(exact, expected, rtol=1e-8, atol=1e-12)
    eig = torch.linalg.eigvalsh(A)
    scale = float(1.5 * eig.max())
    calls = []
    module = ti.LiSSAInfluenceModule(*args, damp=damp, repeat=2, depth=60, scale=scale,
                                     debug_callback=lambda r, t, h: calls.append((r, t, tuple(h.shape))))
    lissa = module.influences([0, 1], [3])
    truncation = float((1 - eig.min() / scale) ** 60)
    assert truncation < 1e-5
    torch.testing.assert_close(lissa, exact, rtol=10 * truncation, atol=0.0)
    p = ref.theta.numel()
    assert calls[0] == (0, 0, (p,)) and calls[-1] == (1, 59, (p,)) and len(calls) == 120


def test_a_custom_inverse_hvp_subclass_works_like_the_seed(problem):
    class DenseSolve(ti.BaseInfluenceModule):  # the seed's extension point: implement inverse_hvp only
        def inverse_hvp(self, vec):
            H = self.training_objective().dense()
            return torch.linalg.solve(H + DAMP * torch.eye(H.shape[0], dtype=H.dtype), vec)

    module = DenseSolve(problem["model"], problem["objective"], problem["train_loader"], problem["test_loader"], "cpu")
    assert module.params_names == ("0.weight", "0.bias", "2.weight", "2.bias")
    assert module.params_shape == ((6, 5), (6,), (3, 6), (3,))
    torch.testing.assert_close(module.influences([7, 8], [2]), _expected(problem, [7, 8], [2]), rtol=1e-8, atol=1e-12)


def test_bad_input_gives_clear_errors(problem):
    args = (problem["model"], problem["objective"], problem["train_loader"], problem["test_loader"], "cpu")
    module = ti.CGInfluenceModule(*args, damp=DAMP)
    with pytest.raises(IndexError, match="outside the dataset"):
        module.train_loss_grad([0, 60])
    with pytest.raises(WherefromError, match="repeated"):
        module.test_loss_grad([1, 1])
    with pytest.raises(WherefromError, match="does not support"):
        ti.CGInfluenceModule(*args, damp=DAMP, callback=print)
    with pytest.raises(WherefromError, match="vector of the"):
        module.inverse_hvp(torch.zeros(3, dtype=torch.float64))

    class SumReduced(type(problem["objective"])):
        def test_loss(self, model, params, batch):
            return torch.nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")

    bad = ti.CGInfluenceModule(problem["model"], SumReduced(), *args[2:], damp=DAMP)
    with pytest.raises(LossReductionError, match="test_loss must return the mean-reduced"):
        bad.test_loss_grad([0, 1])

    untrained = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with pytest.raises(NonPositiveDefiniteError, match="negative eigenvalue"), pytest.warns(UserWarning):
        ti.AutogradInfluenceModule(untrained, problem["objective"], *args[2:], damp=0.0, check_eigvals=True)
