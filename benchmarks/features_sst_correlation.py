#!/usr/bin/env python
"""CD paper's word-level check: correlation of word scores with bag-of-words logistic-regression coefficients.

    nice -n 10 python benchmarks/features_sst_correlation.py [--sentences 1821]

A bag-of-words logistic regression (scikit-learn, L2, C chosen on dev accuracy) is trained on the same data as
the shipped SST-2 LSTM: the 66,984 non-neutral training phrases. For every word of the test sentences that is in
the training vocabulary, each method scores the word inside its sentence as evidence for *positive*:

* CD: the relevant part of ``logit_pos − logit_neg`` for the word's one-position mask;
* integrated gradients (embedding space, zero baseline, 100 steps) of ``p(positive)``;
* gradient × input of ``logit_pos − logit_neg``;
* occlusion: ``(logit_pos − logit_neg)(x) − (same)(x with the word replaced by <unk>, id 0)``.

The table is the Pearson (and Spearman) correlation, over all those word occurrences, between the method's
scores and the logistic-regression coefficient of the word.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from scipy.stats import pearsonr, spearmanr
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import wherefrom as wf  # noqa: E402
from wherefrom.data.sst import load_sst2  # noqa: E402
from wherefrom.features.models import load_sst_lstm  # noqa: E402


def bag_of_words(data) -> tuple[dict[int, float], float]:
    """Coefficient per token id of the best (dev accuracy) L2 logistic regression on the training phrases."""
    phrases, labels = data.phrases()
    docs = lambda seqs: [" ".join(str(int(t)) for t in s) for s in seqs]  # noqa: E731
    vec = CountVectorizer(token_pattern=r"\S+", binary=True)
    train = vec.fit_transform(docs(phrases))
    dev = vec.transform(docs(data.sentences("dev")))
    best = None
    for c in (0.1, 0.3, 1.0, 3.0, 10.0, 30.0):
        clf = LogisticRegression(C=c, max_iter=2000).fit(train, labels)
        acc = clf.score(dev, data.labels("dev"))
        if best is None or acc > best[0]:
            best = (acc, clf, c)
    acc, clf, c = best
    coef = {int(tok): float(clf.coef_[0, j]) for tok, j in vec.vocabulary_.items()}
    print(f"bag-of-words logistic regression: C = {c}, dev accuracy {acc:.3f}", flush=True)
    return coef, acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1821)
    parser.add_argument("--ig-steps", type=int, default=100)
    parser.add_argument("--out", default=os.path.join(HERE, "features_sst_correlation.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    wf.set_progress(False)
    data, model = load_sst2(), load_sst_lstm()
    coef, lr_acc = bag_of_words(data)
    dec = wf.features.Decomposer(model)
    scores: dict[str, list[float]] = {"cd": [], "integrated_gradients": [], "gradient_x_input": [],
                                      "occlusion": []}
    reference: list[float] = []
    start = time.time()
    for sentence in data.sentences("test")[:args.sentences]:
        ids = torch.as_tensor(sentence)[None]
        keep = [t for t, tok in enumerate(sentence) if int(tok) in coef and int(tok) != 0]
        if not keep:
            continue
        n = len(sentence)
        rel = dec.decompose(ids, torch.eye(n)[:, None]).rel[:, 0]                      # [T, 2]
        cd = (rel[:, 1] - rel[:, 0]).numpy()
        ig = wf.features.integrated_gradients(model, ids, 1, steps=args.ig_steps)[0].numpy()
        gxi = wf.features.gradient_times_input(model, ids, 1, contrast=True)[0].numpy()
        occ = wf.features.occlusion(model, ids, 1, torch.eye(n)[:, None], baseline=0, contrast=True)[:, 0]
        for name, values in zip(scores, (cd, ig, gxi, occ.numpy())):
            scores[name].extend(float(values[t]) for t in keep)
        reference.extend(coef[int(sentence[t])] for t in keep)
    results = {"sentences": min(args.sentences, len(data.sentences("test"))), "words": len(reference),
               "bow_dev_accuracy": lr_acc, "seconds": time.time() - start}
    for name, values in scores.items():
        results[name] = {"pearson": float(pearsonr(values, reference)[0]),
                         "spearman": float(spearmanr(values, reference)[0])}
    print(json.dumps(results, indent=2))
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
