"""Recording a run, storing it (memory, zarr), refusing what cannot be differentiated, and the engines' features."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wherefrom as wf
from hydra_refs import batch_plan, tiny_data, tiny_mlp, train_recorded
from wherefrom.methods import hydra_engines
from wherefrom.methods.hydra_steps import StepEvaluator, TrajectoryMismatchError
from wherefrom.trajectory import TrajectoryRecordingError, UnsupportedOptimizerError

TRAIN, TEST = tiny_data()
PLAN = batch_plan(10, 4, 2)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=0.01)


def _recorded(make=_sgd, **kw):
    model = tiny_mlp()
    traj, _ = train_recorded(model, make, TRAIN, PLAN, **kw)
    return model.eval(), traj


def _one_step(model, opt, rec=None, indices=(0, 1)):
    X, y = TRAIN
    b = list(indices)
    opt.zero_grad()
    F.cross_entropy(model(X[b]), y[b]).backward()
    if rec is not None:
        rec.record(b)
    opt.step()


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("make,match", [
    (lambda m: torch.optim.RMSprop(m.parameters()), "RMSprop is not supported"),
    (lambda m: torch.optim.Adam(m.parameters(), amsgrad=True), "amsgrad"),
    (lambda m: torch.optim.SGD(m.parameters(), lr=0.1, maximize=True), "maximize"),
])
def test_unsupported_optimizer_settings_raise(make, match):
    model = tiny_mlp()
    opt = make(model)
    with pytest.raises(UnsupportedOptimizerError, match=match):
        rec = wf.TrajectoryRecorder(model, opt)
        _one_step(model, opt, rec)


def test_loop_mistakes_raise():
    model = tiny_mlp()
    opt = _sgd(model)
    rec = wf.TrajectoryRecorder(model, opt)
    with pytest.raises(TrajectoryRecordingError, match=r"without recorder\.record"):
        _one_step(model, opt)
    with pytest.raises(TrajectoryRecordingError, match="closure"):
        rec.record([0])
        opt.step(lambda: F.cross_entropy(model(TRAIN[0][:1]), TRAIN[1][:1]))
    with pytest.raises(TrajectoryRecordingError, match="integer"):
        rec.record([0.5, 1.5])
    _one_step(model, opt, rec)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an edit outside optimizer.step()
    with pytest.raises(TrajectoryRecordingError, match="changed"):
        _one_step(model, opt, rec)


def test_parameter_without_gradient_raises():
    model = tiny_mlp()
    opt = _sgd(model)
    rec = wf.TrajectoryRecorder(model, opt)
    opt.zero_grad()
    model[0].weight.sum().backward()  # fc2 gets no gradient
    rec.record([0])
    with pytest.raises(TrajectoryRecordingError, match="no gradient"):
        opt.step()


@pytest.mark.parametrize("layer", [nn.Dropout(0.5), nn.BatchNorm1d(4)])
def test_train_mode_dropout_and_batchnorm_are_refused(layer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), layer, nn.Tanh(), nn.Linear(4, 2)).double()
    opt = _sgd(model)
    rec = wf.TrajectoryRecorder(model, opt)
    with pytest.raises(TrajectoryRecordingError, match="eval mode"):
        _one_step(model.train(), opt, rec)
    rec.record([0, 1])  # eval mode is fine (frozen statistics, no dropout)
    _one_step(model.eval(), opt, None)


def test_gradient_clipping_is_detected():
    model = tiny_mlp()
    traj, _ = train_recorded(model, _sgd, TRAIN, PLAN, clip=0.05)
    with pytest.raises(TrajectoryMismatchError, match="clipping"):
        wf.HYDRA(wf.Task(model.eval()), traj).fit(TRAIN)


def test_trajectory_from_another_model_is_refused():
    model, traj = _recorded()
    other = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    with pytest.raises(TrajectoryMismatchError, match="shape"):
        wf.HYDRA(wf.Task(other), traj).fit(TRAIN)
    with pytest.raises(TrajectoryMismatchError, match="final parameters"):
        wf.HYDRA(wf.Task(tiny_mlp(seed=9)), traj).fit(TRAIN)
    with pytest.raises(TrajectoryMismatchError, match="not the ones the recorded optimizer trained"):
        wf.HYDRA(wf.Task(model, params=["2"]), traj).fit(TRAIN)
    relu = tiny_mlp(act=nn.ReLU)
    relu.load_state_dict(model.state_dict())  # same parameters, different function: the gradient check sees it
    with pytest.raises(TrajectoryMismatchError, match="Step 0"):
        wf.HYDRA(wf.Task(relu.eval()), traj).fit(TRAIN)
    with pytest.raises(TrajectoryMismatchError, match="training index"):
        wf.HYDRA(wf.Task(model), traj).fit((TRAIN[0][:5], TRAIN[1][:5]))


def test_engine_configuration_errors():
    model, traj = _recorded()
    task = wf.Task(model)
    assert wf.HYDRA(task, traj).engine_ == "reverse"  # auto: every example, exact
    assert wf.HYDRA(task, traj, hessian=False).engine_ == "reverse"
    assert wf.HYDRA(task, traj, track=[0, 1]).engine_ == "forward"
    with pytest.raises(wf.WherefromError, match="track="):
        wf.HYDRA(task, traj, engine="reverse", track=[0, 1])
    with pytest.raises(wf.WherefromError, match="hessian=False"):
        wf.HYDRA(task, traj, engine="lean")
    with pytest.raises(wf.UnknownNameError):
        wf.HYDRA(task, traj, engine="sideways")
    adam_model, adam_traj = _recorded(lambda m: torch.optim.Adam(m.parameters(), lr=0.05))
    with pytest.raises(TrajectoryMismatchError, match="lean"):
        wf.HYDRA(wf.Task(adam_model), adam_traj, hessian=False, engine="lean").fit(TRAIN).score(TEST)


# ---------------------------------------------------------------------------------------------- storage
def test_zarr_store_round_trip(tmp_path):
    model, traj = _recorded()
    disk_model, _ = _recorded(path=tmp_path / "run.zarr")
    loaded = wf.Trajectory.load(tmp_path / "run.zarr")
    saved = traj.save(tmp_path / "copy.zarr")
    assert len(loaded) == len(traj) == len(PLAN) and loaded.param_names == traj.param_names
    for other in (loaded, saved):
        for t in range(len(traj)):
            a, b = traj.step(t), other.step(t)
            assert torch.equal(a.indices, b.indices) and torch.equal(a.theta, b.theta)
            assert all(torch.equal(a.hyper[k], b.hyper[k]) for k in a.hyper)
        assert torch.equal(other.final_theta, traj.final_theta)
    expected = wf.HYDRA(wf.Task(model), traj).fit(TRAIN).score(TEST)
    got = wf.HYDRA(wf.Task(disk_model), tmp_path / "run.zarr").fit(TRAIN).score(TEST)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    with pytest.raises(wf.WherefromError, match="No recorded trajectory"):
        wf.Trajectory.load(tmp_path / "missing.zarr")


def test_record_without_step_is_dropped():
    model = tiny_mlp()
    opt = _sgd(model)
    rec = wf.TrajectoryRecorder(model, opt)
    rec.record([5, 6])  # e.g. a step a gradient scaler skipped
    _one_step(model, opt, rec, (0, 1))
    traj = rec.close()
    assert len(traj) == 1 and traj.step(0).indices.tolist() == [0, 1] and traj.meta["skipped_records"] == 1


# ---------------------------------------------------------------------------------------------- engines
def test_lean_replays_a_run_recorded_without_parameters():
    model, traj = _recorded()
    lean_model = tiny_mlp()
    light, _ = train_recorded(lean_model, _sgd, TRAIN, PLAN, store_params=False)
    assert light.step(3).theta is None and light.step(0).theta is not None
    expected = wf.HYDRA(wf.Task(model), traj, hessian=False, engine="reverse").fit(TRAIN).score(TEST)
    lean = wf.HYDRA(wf.Task(lean_model.eval()), light, hessian=False)  # auto → lean (replaying)
    assert lean.engine_ == "lean"
    torch.testing.assert_close(lean.fit(TRAIN).score(TEST), expected, rtol=1e-10, atol=1e-13)
    with pytest.raises(wf.WherefromError, match="store_params=False"):
        wf.HYDRA(wf.Task(lean_model), light, engine="reverse")
    light._backend.rows[2]["hyper"]["lr"] = light._backend.rows[2]["hyper"]["lr"] * 1.01  # not the recorded run
    with pytest.raises(TrajectoryMismatchError):
        wf.HYDRA(wf.Task(lean_model), light, hessian=False).fit(TRAIN).score(TEST)


def test_forward_tracking_subsets_and_resumable_cache(tmp_path, monkeypatch):
    model, traj = _recorded()
    task = wf.Task(model)
    full = wf.HYDRA(task, traj).fit(TRAIN).score(TEST)
    sub = wf.HYDRA(task, traj, track=[7, 2, 5], track_chunk=2, cache_dir=tmp_path).fit(TRAIN)
    S = sub.score(TEST)
    assert torch.isnan(S[[0, 1, 3, 4, 6, 8, 9]]).all()
    torch.testing.assert_close(S[[2, 5, 7]], full[[2, 5, 7]], rtol=1e-9, atol=1e-13)
    top = sub.top_k(TEST, k=2)
    assert set(top.helpful_indices.flatten().tolist()) <= {2, 5, 7}

    def boom(*args, **kwargs):
        raise AssertionError("recomputed instead of loading the cache")

    monkeypatch.setattr("wherefrom.methods.hydra.forward_tangents", boom)
    again = wf.HYDRA(task, traj, track=[7, 2, 5], track_chunk=2, cache_dir=tmp_path).fit(TRAIN).score(TEST)
    torch.testing.assert_close(again, S, rtol=0, atol=0, equal_nan=True)
    monkeypatch.undo()
    # a partial chunk resumes from its last checkpoint and ends where an uninterrupted pass ends
    ev = StepEvaluator(task, traj, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*TRAIN)))
    saved = []
    whole = hydra_engines.forward_tangents(ev, torch.tensor([1, 4]), 10, True, checkpoint=saved.append,
                                           checkpoint_every=2)
    assert [s["t"] for s in saved] == [1, 3]
    resumed = hydra_engines.forward_tangents(ev, torch.tensor([1, 4]), 10, True, resume=saved[0])
    torch.testing.assert_close(resumed, whole, rtol=0, atol=1e-15)
    strat = wf.HYDRA(task, traj, track=0.5, seed=1).fit(TRAIN)
    labels = TRAIN[1][strat.tracked_]
    for c in (0, 1):
        assert int((labels == c).sum()) == max(1, round(0.5 * int((TRAIN[1] == c).sum())))


def test_top_k_and_self_influence():
    model, traj = _recorded()
    task = wf.Task(model)
    exact = wf.HYDRA(task, traj, targets_per_pass=3).fit(TRAIN)
    S = exact.score(TEST)
    top = exact.top_k(TEST, k=3)
    torch.testing.assert_close(top.helpful_values, torch.topk(S, 3, dim=0).values.T)
    torch.testing.assert_close(top.harmful_indices, torch.topk(S, 3, dim=0, largest=False).indices.T)
    on_train = exact.score(TRAIN)  # target = training loss of each training example
    torch.testing.assert_close(exact.self_influence(), torch.diagonal(on_train), rtol=1e-9, atol=1e-14)
    forward = wf.HYDRA(task, traj, engine="forward").fit(TRAIN)
    torch.testing.assert_close(forward.self_influence(), torch.diagonal(on_train), rtol=1e-9, atol=1e-14)
    approx = wf.HYDRA(task, traj, hessian=False).fit(TRAIN)
    torch.testing.assert_close(approx.self_influence(), torch.diagonal(approx.score(TRAIN)), rtol=1e-9, atol=1e-14)


def test_batched_hvp_and_gradients_match_explicit_derivatives():
    model, traj = _recorded()
    task = wf.Task(model)
    ev = StepEvaluator(task, traj, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*TRAIN)), hvp_chunk=3)
    data = ev.load(traj.step(2))
    X, y = TRAIN
    b = traj.step(2).indices

    def mean_loss(flat):
        return F.cross_entropy(torch.func.functional_call(model, task.unflatten(flat), (X[b],)), y[b])

    H = torch.autograd.functional.hessian(mean_loss, data.theta)
    V = torch.randn(5, traj.num_params, dtype=torch.float64)
    HV = ev.hvp(data, V)
    torch.testing.assert_close(HV, V @ H, rtol=1e-10, atol=1e-12)  # batched = explicit (H symmetric)
    torch.testing.assert_close(V[0] @ HV[1], V[1] @ HV[0])
    G = ev.example_grads(data)
    torch.testing.assert_close(G.mean(0), ev.batch_grad(data))
    torch.testing.assert_close(ev.example_dots(data, V), G @ V.T)  # forward-mode dots (K < B) = explicit
    torch.testing.assert_close(ev.example_dots(data, V[:1].repeat(5, 1)), G @ V[:1].repeat(5, 1).T)
    HV2, dots = ev.hvp(data, V, with_dots=True)
    torch.testing.assert_close(HV2, HV)
    torch.testing.assert_close(dots, G @ V.T)
    torch.testing.assert_close(ev.batch_grad(data), torch.func.grad(mean_loss)(data.theta))
