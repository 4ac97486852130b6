#!/usr/bin/env python
"""Train the shipped SST-2 LSTM on the shipped SST-2 training phrases and write its float16 weights.

    python scripts/train_sst_lstm.py            # 4 epochs of about 2-4 minutes each on one CPU core

Every non-neutral phrase of the training trees is a training example (phrase-level supervision, as GLUE SST-2);
the epoch with the best dev-sentence accuracy is kept; the weights are rounded to float16 and the dev and test
accuracies of the rounded model are recorded in ``src/wherefrom/_datafiles/models.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from wherefrom.data.sst import PAD, load_sst2  # noqa: E402
from wherefrom.features.models import SSTLSTM, load_model, pad_batch, save_model, sst_accuracy  # noqa: E402

OUT = os.path.join(HERE, "..", "src", "wherefrom", "_datafiles")


def update_manifest(name: str, entry: dict) -> None:
    path = os.path.join(OUT, "models.json")
    manifest = {}
    if os.path.exists(path):
        with open(path) as fh:
            manifest = json.load(fh)
    manifest[name] = entry
    with open(path, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--embed-dim", type=int, default=64)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--embed-dropout", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-save", action="store_true", help="train and report only")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    data = load_sst2()
    phrases, labels = data.phrases()
    labels = torch.as_tensor(labels)
    config = {"vocab_size": len(data.vocab), "embed_dim": args.embed_dim, "hidden_dim": args.hidden_dim}
    model = SSTLSTM(**config, pad_id=PAD, embed_dropout=args.embed_dropout)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    best, best_dev = None, -1.0
    for epoch in range(args.epochs):
        start = time.time()
        model.train()
        order = torch.randperm(len(phrases))
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            idx = order[i:i + args.batch_size]
            ids, lengths = pad_batch([phrases[j] for j in idx.tolist()], PAD)
            loss = F.cross_entropy(model.forward_padded(ids, lengths), labels[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
        dev = sst_accuracy(model, "dev")
        print(f"epoch {epoch}: loss {total / len(order):.4f}  dev {dev:.4f}  ({time.time() - start:.0f} s)",
              flush=True)
        if dev > best_dev:
            best, best_dev = copy.deepcopy(model.state_dict()), dev
    model.load_state_dict(best)
    model.embed_dropout = 0.0
    # the shipped model is the float16-rounded one: measure that
    rounded = SSTLSTM(**config, pad_id=PAD)
    rounded.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    dev, test = sst_accuracy(rounded, "dev"), sst_accuracy(rounded, "test")
    print(f"float16 weights: dev accuracy {dev:.4f}, test accuracy {test:.4f}")
    if args.no_save:
        return
    entry = save_model(rounded, "sst2-lstm", os.path.join(OUT, "sst2_lstm.safetensors"), {
        "config": config, "dev_accuracy": round(dev, 4), "test_accuracy": round(test, 4),
        "evaluated_on": "SST-2 sentences of trees/dev.txt (model selection) and trees/test.txt (reported)",
        "command": "python scripts/train_sst_lstm.py", "seed": args.seed, "epochs": args.epochs})
    update_manifest("sst2-lstm", entry)
    assert abs(sst_accuracy(load_model("sst2-lstm"), "test") - test) < 1e-9
    print("wrote", entry["file"], entry["sha256"])


if __name__ == "__main__":
    main()
