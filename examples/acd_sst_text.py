#!/usr/bin/env python
"""ACD hierarchy of the shipped SST-2 LSTM on one sentence: the paper's text figure (Fig. 2) as a PNG.

    python examples/acd_sst_text.py [--text "..."] [--out docs/features/acd_sst.png]
"""

from __future__ import annotations

import argparse
import os

import torch

import wherefrom as wf
from wherefrom.data.sst import load_sst2
from wherefrom.features.models import load_sst_lstm

HERE = os.path.dirname(os.path.abspath(__file__))
TEXT = "the plot is not very interesting , but the acting is wonderful and the ending is moving ."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=TEXT, help="a lower-case, space-tokenised sentence")
    parser.add_argument("--target", type=int, default=None, help="class to explain (default: predicted)")
    parser.add_argument("--out", default=os.path.join(HERE, "..", "docs", "features", "acd_sst.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    wf.set_progress(False)

    sst, model = load_sst2(), load_sst_lstm()
    ids = sst.encode(args.text)
    with torch.no_grad():
        prob = torch.softmax(model(ids), -1)[0]
    target = int(prob.argmax()) if args.target is None else args.target
    names = ["negative", "positive"]
    h = wf.features.acd(model, ids, target=target, labels=sst.decode(ids))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    h.plot(args.out, class_names=names,
           title=f"ACD of the SST-2 LSTM — p(positive) = {prob[1]:.2f}; colour: CD score for "
                 f"'{names[target]}' (logit difference), blue supports it")
    print(f"predicted {names[int(prob.argmax())]} (p = {prob.max():.3f}); {len(h.levels)} levels; wrote {args.out}")
    for comps, scores in h.text_rows()[1:]:
        phrases = [" ".join(w for w, c in zip(h.labels, comps) if c == cid) for cid in scores]
        print("  ", "; ".join(f"[{p}] {s:+.2f}" for p, s in zip(phrases, scores.values())))


if __name__ == "__main__":
    main()
