#!/usr/bin/env python
"""Training-data attribution for Hugging Face transformers, without downloading anything.

A tiny BERT sentiment classifier and a tiny GPT-2 language model are built from ``transformers`` configs (random
init), trained for a few hundred steps on shipped SST-2 sentences with a word-level tokenizer, and explained with
TRAK, EK-FAC influence, LoGra and TracIn. Batches are plain Hugging Face dicts (``input_ids``, ``attention_mask``,
``labels``); no ``input_fn`` is needed.

    python examples/transformers_sst.py [--n-train 200] [--steps 150]
"""

from __future__ import annotations

import argparse

import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

import wherefrom as wf
from wherefrom.data.text import DictDataset, WordTokenizer, sst2_text

LENGTH = 24


def train(model: torch.nn.Module, data: DictDataset, steps: int, lr: float = 2e-3) -> None:
    """Adam on random minibatches of 32, using the model's own (batch-mean) loss."""
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(data), generator=gen)[:32]
        opt.zero_grad()
        model(**{k: v[idx] for k, v in data.tensors.items()}).loss.backward()
        opt.step()
    model.eval()


def show(title: str, scores: torch.Tensor, train: DictDataset, test: DictDataset, tok: WordTokenizer) -> None:
    print(f"\n== {title}: scores {tuple(scores.shape)}")
    for j in range(min(2, scores.shape[1])):
        print("test:     ", tok.decode(test[j]["input_ids"]))
        for i in scores[:, j].topk(2).indices.tolist():
            print(f"  helpful {float(scores[i, j]):+.3g}:", tok.decode(train[i]["input_ids"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.manual_seed(0)
    wf.set_progress(False)
    tok = WordTokenizer(2000)

    # ---- sequence classification: dict batches, SequenceClassifierOutput.logits, default cross-entropy
    train_set = sst2_text("train", args.n_train, "classification", max_length=LENGTH, tokenizer=tok)
    test_set = sst2_text("dev", 8, "classification", max_length=LENGTH, tokenizer=tok)
    bert = BertForSequenceClassification(BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2, pad_token_id=tok.pad_token_id))
    train(bert, train_set, args.steps)
    task = wf.Task(bert)
    show("BERT, TRAK", wf.TRAK(task, proj_dim=64).fit(train_set).score(test_set), train_set, test_set, tok)
    show("BERT, EK-FAC influence",
         wf.InfluenceFunction(task, solver="ekfac", damping="auto", curvature="ggn").fit(train_set).score(test_set),
         train_set, test_set, tok)

    # ---- causal language model: tied embeddings, per-example loss = sum of next-token losses, padding masked
    lm_train = sst2_text("train", args.n_train, "causal_lm", max_length=LENGTH, tokenizer=tok)
    lm_test = sst2_text("dev", 8, "causal_lm", max_length=LENGTH, tokenizer=tok)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2,
                                     n_positions=LENGTH, bos_token_id=0, eos_token_id=0,
                                     pad_token_id=tok.pad_token_id))
    train(gpt, lm_train, args.steps)
    lm_task = wf.Task(gpt, loss_fn=wf.targets.sequence_cross_entropy("sum"))
    show("GPT-2, LoGra", wf.LoGra(lm_task, rank=8).fit(lm_train).score(lm_test), lm_train, lm_test, tok)
    show("GPT-2, TracIn (final checkpoint)",
         wf.TracInCP(lm_task, checkpoints=[lm_task.state(None)], learning_rates=2e-3).fit(lm_train).score(lm_test),
         lm_train, lm_test, tok)


if __name__ == "__main__":
    main()
