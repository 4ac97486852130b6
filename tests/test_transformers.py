"""Hugging Face transformers as first-class models: dict batches, ``ModelOutput`` logits, sequence losses, tied
embeddings, padding, and EK-FAC / LoGra / TRAK / TracIn on a tiny BERT classifier and a tiny GPT-2 causal LM.

References are independent of wherefrom's gradient and loss code: single-example backward passes through the Hugging
Face model on the *unpadded* sentence (the classifier's own ``.loss``; the LM's next-token cross-entropy).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import wherefrom as wf
from hf_models import bert_classifier, gpt2_lm
from wherefrom.data.text import DictDataset
from wherefrom.layers import LayerSet
from wherefrom.sources import FullGradients

MODELS = {"bert": bert_classifier, "gpt2": gpt2_lm}


def make_task(kind: str, reduction: str = "sum") -> tuple[wf.Task, DictDataset, DictDataset]:
    model, train, test = MODELS[kind]()
    loss = None if kind == "bert" else wf.targets.sequence_cross_entropy(reduction, shift=True)
    return wf.Task(model, loss_fn=loss), train, test  # no input_fn: dict batches and .logits are the defaults


def reference_gradients(task: wf.Task, data: DictDataset, kind: str, reduction: str = "sum") -> torch.Tensor:
    """``[n, p]`` from one backward pass per example, through the HF model, on the sentence without padding (no
    attention mask, no label masking)."""
    model = task.model
    params = dict(model.named_parameters())
    rows = []
    for i in range(len(data)):
        item = data[i]
        length = int(item["attention_mask"].sum())
        one = {k: v[None, :length] if v.dim() else v[None] for k, v in item.items()}
        model.zero_grad()
        if kind == "bert":
            loss = model(**one).loss  # labels given: the model's own cross-entropy
        else:  # next-token cross-entropy in float64 (the model's own .loss is computed in float32)
            logits = model(input_ids=one["input_ids"]).logits[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits, one["input_ids"][0, 1:], reduction=reduction)
        loss.backward()
        rows.append(torch.cat([params[n].grad.reshape(-1) for n in task.param_names]))
    model.zero_grad()
    return torch.stack(rows)


def features(task: wf.Task, data: DictDataset, fn=None) -> torch.Tensor:
    source = FullGradients("auto").setup(task)
    assert source.use_layers
    batch = {k: v for k, v in data.tensors.items()}
    return source.batch_features(task.state(None), batch, task.loss_fn if fn is None else fn)


def pad_more(data: DictDataset, extra: int) -> DictDataset:
    """The same examples with ``extra`` more padding positions (mask 0, labels -100 for token labels)."""
    t = dict(data.tensors)
    n = len(data)
    out = {"input_ids": torch.cat([t["input_ids"], torch.ones(n, extra, dtype=torch.long)], 1),
           "attention_mask": torch.cat([t["attention_mask"], torch.zeros(n, extra, dtype=torch.long)], 1)}
    labels = t["labels"]
    out["labels"] = labels if labels.dim() == 1 else torch.cat([labels, torch.full((n, extra), -100)], 1)
    return DictDataset(**out)


# ---------------------------------------------------------------------------------------------- per-example gradients
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_per_example_gradients_equal_single_example_backward_passes(kind):
    task, train, _ = make_task(kind)
    data = train.subset(range(8))
    assert (data.tensors["attention_mask"] == 0).any(), "the batch must contain padding"
    layers = LayerSet(task)
    assert layers.complete and not layers.unsupported
    G = features(task, data)
    R = reference_gradients(task, data, kind)
    assert G.shape == R.shape == (8, task.num_params)
    torch.testing.assert_close(G, R, rtol=1e-9, atol=1e-12)


def test_gpt2_tied_embedding_is_one_parameter_with_both_uses():
    task, train, _ = make_task("gpt2")
    assert task.tied == {"lm_head.weight": "transformer.wte.weight"}
    assert "lm_head.weight" not in task.param_names
    layers = LayerSet(task)
    tied = layers.layers["transformer.wte"]
    assert type(tied).__name__ == "TiedLayer" and [m.name for m in tied.members] == ["transformer.wte", "lm_head"]
    # selecting only the tied weight (by its alias) still sums the head's and the embedding's gradients
    sub = task.restrict(["lm_head.weight"])
    assert sub.param_names == ["transformer.wte.weight"]
    data = train.subset(range(4))
    R = reference_gradients(task, data, "gpt2")[:, task.param_slices()["transformer.wte.weight"]]
    torch.testing.assert_close(features(sub, data), R, rtol=1e-9, atol=1e-12)


def test_gpt2_mean_reduction_equals_the_models_own_loss():
    task, train, _ = make_task("gpt2", reduction="mean")
    data = train.subset(range(5))
    torch.testing.assert_close(features(task, data), reference_gradients(task, data, "gpt2", "mean"),
                               rtol=1e-9, atol=1e-12)
    model = task.model
    with torch.no_grad():
        values = task.per_example(task.loss_fn, task.flat_params(task.state(None)), task.state(None),
                                  dict(data.tensors))
        for i in range(5):
            item = data[i]
            length = int(item["attention_mask"].sum())
            one = {k: v[None, :length] for k, v in item.items()}
            assert float(values[i]) == pytest.approx(float(model(**one).loss), rel=1e-6)  # HF's loss is float32


# ---------------------------------------------------------------------------------------------- padding
@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padding_changes_no_gradient_and_no_score(kind):
    task, train, test = make_task(kind)
    train, test = train.subset(range(10)), test.subset(range(3))
    G = features(task, train)
    torch.testing.assert_close(features(task, pad_more(train, 4)), G, rtol=1e-10, atol=1e-13)
    solver = dict(curvature="empirical_fisher") if kind == "gpt2" else {}
    for name in ("ekfac", "kfac"):  # K-FAC's input covariance is averaged over the real positions only
        a = wf.InfluenceFunction(task, solver=name, damping=1e-3, progress=False, **solver).fit(train).score(test)
        b = wf.InfluenceFunction(task, solver=name, damping=1e-3, progress=False, **solver).fit(
            pad_more(train, 4)).score(pad_more(test, 2))
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    a = wf.LoGra(task, rank=4, progress=False).fit(train).score(test)
    b = wf.LoGra(task, rank=4, progress=False).fit(pad_more(train, 4)).score(pad_more(test, 2))
    torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------------- methods
def _methods(kind: str, task: wf.Task) -> dict[str, wf.Attributor]:
    lm = kind == "gpt2"
    trak = (dict(train_target=wf.targets.causal_lm_margin, target=wf.targets.causal_lm_margin) if lm else {})
    return {
        "ekfac": wf.InfluenceFunction(task, solver="ekfac", damping=1e-3, progress=False,
                                      curvature="empirical_fisher" if lm else "ggn"),
        "logra": wf.LoGra(task, rank=4, progress=False),
        "trak": wf.TRAK(task, proj_dim=8, progress=False, **trak),
        "tracin": wf.TracInCP(task, checkpoints=[task.state(None)], learning_rates=0.5, progress=False),
    }


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_ekfac_logra_trak_tracin_give_finite_scores(kind):
    task, train, test = make_task(kind)
    test = test.subset(range(3))
    for name, method in _methods(kind, task).items():
        scores = method.fit(train).score(test)
        assert scores.shape == (len(train), 3), name
        assert torch.isfinite(scores).all() and scores.abs().max() > 0, name


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_tracin_and_full_rank_logra_equal_explicit_gradient_dot_products(kind):
    task, train, test = make_task(kind)
    train, test = train.subset(range(8)), test.subset(range(3))
    G, Q = reference_gradients(task, train, kind), reference_gradients(task, test, kind)
    tracin = wf.TracInCP(task, checkpoints=[task.state(None)], learning_rates=0.5, progress=False)
    torch.testing.assert_close(tracin.fit(train).score(test).double(), 0.5 * G @ Q.T, rtol=1e-7, atol=1e-10)
    # LoGra without projection (rank above every layer's size) and without preconditioner is the plain dot product
    logra = wf.LoGra(task, rank=10_000, preconditioner="identity", progress=False)
    torch.testing.assert_close(logra.fit(train).score(test).double(), G @ Q.T, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------------------------------------- defaults and errors
def test_defaults_read_dict_batches_and_model_outputs():
    task, train, _ = make_task("bert")
    batch = {k: v[:3] for k, v in train.tensors.items()}
    assert set(wf.task.default_input_fn(batch)) == {"input_ids", "attention_mask"}  # labels are not passed
    out = task.outputs(task.flat_params(task.state(None)), task.state(None), batch)
    assert isinstance(out, torch.Tensor) and out.shape == (3, 2)
    raw = wf.Task(task.model, output_fn=lambda o: o)  # override: the loss sees the whole ModelOutput
    whole = raw.outputs(raw.flat_params(raw.state(None)), raw.state(None), batch)
    assert hasattr(whole, "logits") and torch.equal(whole.logits, out)


def test_default_loss_on_token_logits_names_the_sequence_losses():
    task, train, _ = make_task("gpt2")
    plain = wf.Task(task.model)  # default cross-entropy on token logits
    with pytest.raises(wf.WherefromError, match="causal_lm_loss"):
        wf.TracInCP(plain, checkpoints=[plain.state(None)], progress=False).fit(train.subset(range(4)))
    with pytest.raises(wf.WherefromError, match="reduction"):
        wf.targets.sequence_cross_entropy("max")


def test_vmap_on_a_model_with_data_dependent_forward_says_what_to_do():
    task, train, _ = make_task("bert")
    with pytest.raises(wf.WherefromError, match="registered layer types"):
        wf.TracInCP(task, checkpoints=[task.state(None)], source=wf.sources.FullGradients("vmap"),
                    progress=False).fit(train.subset(range(2)))


def test_saved_attributor_on_a_causal_lm_reloads_with_its_sequence_loss(tmp_path):
    task, train, test = make_task("gpt2")
    att = wf.LoGra(task, rank=4, progress=False).fit(train.subset(range(6)))
    att.save(tmp_path / "logra")
    again = wf.load(tmp_path / "logra", wf.Task(task.model, loss_fn=wf.targets.causal_lm_loss))
    torch.testing.assert_close(again.score(test.subset(range(2))), att.score(test.subset(range(2))), rtol=0, atol=0)


def test_batches_from_a_collator_returning_batch_encoding_work_unchanged():
    from torch.utils.data import DataLoader
    from transformers import BatchEncoding

    task, train, test = make_task("bert")
    train = train.subset(range(6))

    def collate(items):
        return BatchEncoding({k: torch.stack([it[k] for it in items]) for k in items[0]})

    loader = DataLoader(train, batch_size=4, collate_fn=collate)
    a = wf.TracInCP(task, checkpoints=[task.state(None)], progress=False).fit(loader).score(test.subset(range(2)))
    b = wf.TracInCP(task, checkpoints=[task.state(None)], progress=False).fit(train).score(test.subset(range(2)))
    torch.testing.assert_close(a, b)
