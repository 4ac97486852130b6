"""Tiny Hugging Face transformers built from configs (no download), trained a few steps on shipped SST-2 text."""

from __future__ import annotations

import functools

import torch

from wherefrom.data.text import DictDataset, WordTokenizer, sst2_text

VOCAB, LENGTH, N_TRAIN, N_TEST = 300, 12, 24, 6


def _train(model: torch.nn.Module, data: DictDataset, loss_of, steps: int = 20, lr: float = 3e-3) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        idx = torch.randperm(len(data), generator=gen)[:8]
        batch = {k: v[idx] for k, v in data.tensors.items()}
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    model.eval()


@functools.lru_cache(maxsize=1)
def bert_classifier() -> tuple[torch.nn.Module, DictDataset, DictDataset]:
    """A 2-layer, hidden-16 BERT sequence classifier on SST-2 sentences, with train and test data."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=LENGTH + 4, num_labels=2, pad_token_id=1)
    model = BertForSequenceClassification(config).double()
    tok = WordTokenizer(VOCAB)
    data = sst2_text("train", N_TRAIN + N_TEST, "classification", max_length=LENGTH, tokenizer=tok)
    _train(model, data, lambda m, b: m(**b).loss)
    return model, data.subset(range(N_TRAIN)), data.subset(range(N_TRAIN, N_TRAIN + N_TEST))


@functools.lru_cache(maxsize=1)
def gpt2_lm() -> tuple[torch.nn.Module, DictDataset, DictDataset]:
    """A 2-layer, hidden-16 GPT-2 causal LM (tied embeddings) on SST-2 sentences, with train and test data."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=LENGTH + 4, bos_token_id=0,
                        eos_token_id=0, pad_token_id=1)
    model = GPT2LMHeadModel(config).double()
    tok = WordTokenizer(VOCAB)
    data = sst2_text("train", N_TRAIN + N_TEST, "causal_lm", max_length=LENGTH, tokenizer=tok)
    _train(model, data, lambda m, b: m(**b).loss)
    return model, data.subset(range(N_TRAIN)), data.subset(range(N_TRAIN, N_TRAIN + N_TEST))
