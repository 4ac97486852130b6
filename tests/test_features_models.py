"""The shipped SST-2 data and the shipped models: accuracy, CD on them, ACD end to end, plots."""

import json

import numpy as np
import pytest
import torch

import wherefrom as wf
from wherefrom.data import mnist_datasets
from wherefrom.data.sst import load_sst2
from wherefrom.features.models import load_mnist_cnn, load_sst_lstm, model_manifest, sst_accuracy


def test_shipped_sst2_matches_the_treebank_counts():
    data = load_sst2()
    assert [len(data.sentences(s)) for s in ("train", "dev", "test")] == [6920, 872, 1821]
    assert data.labels("test").sum() == 909 and data.vocab[:2] == ["<unk>", "<pad>"]
    phrases, labels = data.phrases()
    assert len(phrases) == 66984 and set(np.unique(labels)) == {0, 1}
    ids = data.encode("a wonderful film")
    assert data.decode(ids[0]) == ["a", "wonderful", "film"]
    with pytest.raises(wf.WherefromError):
        data.sentences("validation")


def test_shipped_sst_lstm_reaches_the_recorded_test_accuracy():
    model = load_sst_lstm()
    acc = sst_accuracy(model, "test")
    assert acc >= 0.83
    assert acc == pytest.approx(model_manifest()["sst2-lstm"]["test_accuracy"], abs=1e-4)


def test_shipped_mnist_cnn_accuracy_and_cd_on_it():
    model = load_mnist_cnn()
    images, labels = mnist_datasets("mnist", flatten=False)[1].tensors
    with torch.no_grad():
        acc = float((model(images).argmax(-1) == labels).double().mean())
    assert acc >= 0.95 and acc == pytest.approx(model_manifest()["mnist-cnn"]["test_accuracy"], abs=1e-4)
    x = images[:2]
    masks = wf.features.block_masks(28, 28, 7)[:, None, None].float()          # 16 blocks of 7 x 7
    rel, irrel = wf.features.cd(model, x, masks)
    torch.testing.assert_close(rel + irrel, model(x).detach().expand(16, 2, 10), atol=1e-4, rtol=0)


def test_acd_end_to_end_on_the_shipped_models(tmp_path):
    model = load_mnist_cnn()
    x = mnist_datasets("mnist", flatten=False)[1].tensors[0][:1]
    h = wf.features.acd(model, x)
    top = h.top()
    assert len(top.scores) == 1 and h.order().shape == (28, 28)
    union = torch.as_tensor(top.components > 0, dtype=torch.float32)
    direct = float(wf.features.cd(model, x, union).rel[0, h.target])
    assert next(iter(top.scores.values())) == pytest.approx(direct, abs=1e-4)
    fig = h.plot(str(tmp_path / "mnist.png"))
    assert (tmp_path / "mnist.png").stat().st_size > 10_000 and len(fig.axes) >= 6

    sst, lstm = load_sst2(), load_sst_lstm()
    ids = sst.encode("not a good movie , but a wonderful cast")
    text = wf.features.acd(lstm, ids, target=1, labels=sst.decode(ids))
    with torch.no_grad():
        logits = lstm(ids)[0]
    assert text.full_score == pytest.approx(float(logits[1] - logits[0]), abs=1e-4)
    text.plot(str(tmp_path / "sst.png"))
    assert json.loads(json.dumps(text.to_dict()))["labels"][0] == "not"


def test_docs_quick_start_runs():
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "features.md").read_text()
    namespace: dict = {}
    exec(compile(re.findall(r"```python\n(.*?)```", text, flags=re.S)[0], "features.md", "exec"), namespace)
    assert namespace["words"].rel.shape == (namespace["ids"].shape[1], 1, 2)
    assert namespace["image_h"].order().shape == (28, 28)
