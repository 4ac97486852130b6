"""``wherefrom attribute --method hydra`` on a spec with a recorded run: scores equal HYDRA's, and the training-run
panel lists, for the shown examples, exactly the steps whose batch held them."""

import json

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import wherefrom as wf
from report_specs import write
from wherefrom.cli import app
from wherefrom.report import load_spec

RECORDED = '''
import torch
from torch import nn
import wherefrom as wf
from wherefrom.report import Spec

PLAN = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [3, 7, 11, 0], [1, 5, 9], [2, 6, 10, 4], [8]]


def spec(path=None):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(16, 3, generator=g, dtype=torch.float64)
    y = (X[:, 0] > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    rec = wf.TrajectoryRecorder(model, opt, path=path)
    for b in PLAN:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[b]), y[b]).backward()
        rec.record(b)
        opt.step()
        sched.step()
    return Spec(model=model.eval(), train=(X[:12], y[:12]), test=(X[12:], y[12:]), trajectory=rec.close(),
                class_names=["neg", "pos"])
'''


def test_attribute_hydra_shows_the_steps_behind_the_scores(tmp_path):
    spec_file = write(tmp_path, "run_spec.py", RECORDED)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["attribute", str(spec_file), "--method", "hydra", "--test", "0:4", "--top-k", "3",
                                   "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    config = json.loads((out / "results.json").read_text())
    s = load_spec(str(spec_file))
    direct = wf.HYDRA(wf.Task(s.model), s.trajectory).fit(s.train).score(s.test)
    torch.testing.assert_close(load_file(out / "scores.safetensors")["scores"].double(), direct, rtol=1e-5,
                               atol=1e-9)
    assert config["score_scale"] == "leave-one-out"
    run = config["training_run"]
    plan = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [3, 7, 11, 0], [1, 5, 9], [2, 6, 10, 4], [8]]
    assert run["steps"] == len(plan) and run["optimizer"] == "sgd" and (run["batch_min"], run["batch_max"]) == (1, 4)
    assert [v for _, v in run["lr"]] == [0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]  # the scheduler's rates
    top = load_file(out / "topk.safetensors")
    shown = set(top["helpful_indices"].flatten().tolist()) | set(top["harmful_indices"].flatten().tolist())
    assert {int(i) for i in run["steps_of"]} == shown
    for i in shown:
        assert run["steps_of"][str(i)] == [t for t, b in enumerate(plan) if i in b]
    html = (out / "report.html").read_text()
    assert "The recorded training run" in html and 'class="lr-schedule"' in html
    i = int(top["helpful_indices"][0, 0])
    row = html.split(f'data-test-index="0" data-train-index="{i}"', 1)[1].split("</tr>", 1)[0]
    assert ", ".join(str(t) for t, b in enumerate(plan) if i in b) in row
