"""wherefrom.compat.ptif: the seed's README example runs as written; numbers against explicit Hessians."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import wherefrom as wf
from compat_refs import BruteForce, blobs, train_to_optimum

# pytorch_influence_functions' README usage, verbatim except the import line ("import pytorch_influence_functions
# as ptif") and the two lines that supply the model and loaders; the test sets the LiSSA depth (the default, 5000
# steps, is too slow for a unit test), as the README invites: "config ... can of course be changed".
README_USAGE = '''
import wherefrom.compat.ptif as ptif

# Supplied by the user:
model = get_my_model()
trainloader, testloader = get_my_dataloaders()

ptif.init_logging()
config = ptif.get_default_config()
config.update(test_overrides)

influences, harmful, helpful = ptif.calc_img_wise(config, model, trainloader, testloader)
'''

REG = 0.01


@pytest.fixture(scope="module")
def problem():
    X, y = blobs(48, seed=3)
    Xt, yt = blobs(6, seed=4)
    torch.manual_seed(0)
    model = train_to_optimum(nn.Linear(5, 3).double(), X, y, REG)
    ref = BruteForce(model, X, y, REG)
    return {
        "model": model, "X": X, "y": y, "Xt": Xt, "yt": yt, "ref": ref,
        "H": ref.hessian(with_reg=False),  # ptif's Hessian: the mean cross-entropy, no regulariser
        "G": ref.example_grads(X, y, with_reg=False),
        "Q": ref.example_grads(Xt, yt, with_reg=False),
        # the whole training set in one batch: every LiSSA step then uses the full Hessian (deterministic)
        "trainloader": DataLoader(TensorDataset(X, y), batch_size=48, shuffle=True),
        "testloader": DataLoader(TensorDataset(Xt, yt), batch_size=4),
    }


def run_readme(problem, tmp_path, monkeypatch, **overrides):
    monkeypatch.chdir(tmp_path)
    namespace = {"get_my_model": lambda: problem["model"],
                 "get_my_dataloaders": lambda: (problem["trainloader"], problem["testloader"]),
                 "test_overrides": overrides}
    exec(compile(README_USAGE, "ptif README", "exec"), namespace)
    return namespace["influences"], namespace["harmful"], namespace["helpful"], namespace["config"]


def truncated_lissa(problem, depth: int, damp: float, scale: float) -> torch.Tensor:
    """Brute force of ptif's recursion with the full Hessian: ``h_T = Σ_{k≤T} M^k v``, ``M = (1−d)I − H/s``."""
    M = (1 - damp) * torch.eye(problem["H"].shape[0], dtype=torch.float64) - problem["H"] / scale
    V = problem["Q"].T  # [p, m]
    h = V.clone()
    for _ in range(depth):
        h = V + M @ h
    return -(problem["G"] @ h) / len(problem["G"])  # [n, m]: ptif's influence = −∇ℓ(z_i)ᵀ s_test / n


def as_matrix(influences, test_ids) -> torch.Tensor:
    return torch.tensor([influences[str(j)]["influence"] for j in test_ids], dtype=torch.float64).T


def test_readme_example_equals_the_brute_force_recursion(problem, tmp_path, monkeypatch):
    influences, harmful, helpful, config = run_readme(problem, tmp_path, monkeypatch, recursion_depth=150)
    assert (config["damp"], config["scale"], config["r_averaging"]) == (0.01, 25.0, 1)  # ptif's defaults
    scores = as_matrix(influences, range(6))
    torch.testing.assert_close(scores, truncated_lissa(problem, 150, 0.01, 25.0), rtol=1e-9, atol=1e-13)
    # returned lists: all training ids ordered by the mean influence (negative = helpful)
    mean = scores.mean(1)
    assert sorted(helpful) == list(range(48)) and harmful == helpful[::-1]
    assert (mean[helpful][:-1] <= mean[helpful][1:]).all()
    # the seed's JSON layout, written to config["outdir"]
    written = json.loads((tmp_path / "outdir" / "influence_results_False_False.json").read_text())
    assert written == json.loads(json.dumps(influences))
    entry = written["2"]
    assert set(entry) == {"label", "num_in_dataset", "time_calc_influence_s", "influence", "harmful", "helpful"}
    assert entry["label"] == int(problem["yt"][2]) and entry["num_in_dataset"] == 2
    assert entry["helpful"][0] == int(scores[:, 2].argmin()) and entry["harmful"][0] == int(scores[:, 2].argmax())
    meta = json.loads((tmp_path / "outdir" / "influences_results_meta_False-False.json").read_text())
    assert meta["test_sample_index_list"] == list(range(6)) and meta["recursion_depth"] == 150


def test_converged_scores_equal_the_explicit_inverse_and_native_wherefrom(problem, tmp_path, monkeypatch):
    damp, scale = 0.1, 25.0  # converges in 150 steps: (1 − damp)^150 < 1e-6
    influences, *_ = run_readme(problem, tmp_path, monkeypatch, recursion_depth=150, damp=damp)
    scores = as_matrix(influences, range(6))
    A = problem["H"] + damp * scale * torch.eye(problem["H"].shape[0], dtype=torch.float64)
    brute = -scale * problem["G"] @ torch.linalg.solve(A, problem["Q"].T) / 48
    torch.testing.assert_close(scores, brute, rtol=1e-5, atol=1e-9)
    test = TensorDataset(problem["Xt"], problem["yt"])
    native = wf.InfluenceFunction(wf.Task(problem["model"]), "explicit", damping=damp * scale)
    tau = native.fit(TensorDataset(problem["X"], problem["y"])).score(test)
    torch.testing.assert_close(scores, -scale * tau, rtol=1e-5, atol=1e-9)  # the documented mapping


def test_minibatch_lissa_equals_native_lissa_under_the_mapping(problem, tmp_path, monkeypatch):
    problem = dict(problem, trainloader=DataLoader(TensorDataset(problem["X"], problem["y"]), batch_size=16))
    influences, *_ = run_readme(problem, tmp_path, monkeypatch, recursion_depth=40, r_averaging=2, seed=7)
    native = wf.InfluenceFunction(wf.Task(problem["model"]), "lissa", damping=0.01 * 25.0, scale=25.0, depth=40,
                                  repeats=2, hvp_batch_size=16, seed=7, average=0.0)
    tau = native.fit(TensorDataset(problem["X"], problem["y"])).score(TensorDataset(problem["Xt"], problem["yt"]))
    torch.testing.assert_close(as_matrix(influences, range(6)), -25.0 * tau, rtol=1e-10, atol=1e-14)


def _retrained_test_loss(problem, keep: torch.Tensor, j: int) -> float:
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    model.load_state_dict(problem["model"].state_dict())
    train_to_optimum(model, problem["X"][keep], problem["y"][keep], REG)
    with torch.no_grad():
        return float(F.cross_entropy(model(problem["Xt"][j:j + 1]), problem["yt"][j:j + 1]))


def test_helpful_and_harmful_follow_leave_one_out_retraining(problem, tmp_path, monkeypatch):
    influences, *_ = run_readme(problem, tmp_path, monkeypatch, recursion_depth=150, damp=0.1)
    for j in (0, 3):
        base = _retrained_test_loss(problem, torch.ones(48, dtype=torch.bool), j)
        for key, sign in (("helpful", 1.0), ("harmful", -1.0)):
            keep = torch.ones(48, dtype=torch.bool)
            keep[influences[str(j)][key][0]] = False
            # removing the most helpful example raises the test loss; removing the most harmful one lowers it
            assert sign * (_retrained_test_loss(problem, keep, j) - base) > 0, (j, key)


def test_all_grad_mode_and_per_class_selection(problem, tmp_path, monkeypatch):
    import wherefrom.compat.ptif as ptif

    monkeypatch.chdir(tmp_path)
    config = ptif.get_default_config()
    config.update(recursion_depth=30, num_classes=3, test_sample_num=1, test_start_index=0)
    first, harmful, helpful = ptif.calc_img_wise(config, problem["model"], problem["trainloader"],
                                                 problem["testloader"])
    labels = problem["yt"].tolist()
    expected_ids = [labels.index(c) for c in range(3) if c in labels]  # the first test point of each class
    assert [int(k) for k in first] == expected_ids
    assert (tmp_path / "outdir" / "influence_results_0_1.json").exists()
    again, harmful2, helpful2 = ptif.calc_all_grad_then_test(config, problem["model"], problem["trainloader"],
                                                             problem["testloader"])
    assert {k: v["influence"] for k, v in again.items()} == {k: v["influence"] for k, v in first.items()}
    assert (harmful2, helpful2) == (harmful, helpful)
    assert (tmp_path / "outdir" / "influence_results.json").exists()
    assert any((tmp_path / "outdir" / "grad_z").iterdir())  # training gradients kept on disk
