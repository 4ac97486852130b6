#!/usr/bin/env python
"""Speed of contextual decomposition and ACD on the shipped models (one thread, medians of repeats).

    nice -n 10 python benchmarks/features_speed.py [--repeats 7] [--out benchmarks/features_speed.json]

* one CD call with M masks against M single forward passes (and against one batched forward of M rows), for the
  MNIST CNN (M = 100 random block masks) and the SST LSTM (M = 30 single-word masks of a 30-token sentence);
* a full 2-D ACD of a 28 × 28 MNIST image at block size 1 (default settings: 5 iterations and the final merge),
  over 10 test images;
* a 1-D ACD of a 30-token sentence (default settings: up to 25 iterations), over the test sentences of 30 tokens.

Every figure is a median over repeats, each with a forward pass timed in the same run as a yardstick; the machine
is shared and noisy, so ratios are more stable than seconds. ACD times are given as wall seconds and as process
CPU seconds (one thread: the work itself, without the time spent waiting for a core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import wherefrom as wf  # noqa: E402
from wherefrom.data import mnist_datasets  # noqa: E402
from wherefrom.data.sst import load_sst2  # noqa: E402
from wherefrom.features.models import load_mnist_cnn, load_sst_lstm  # noqa: E402

CPU: list[float] = []        # process CPU seconds of every timed call, in order (one thread: the work itself)


def timed(fn, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls; their CPU seconds are appended to ``CPU``."""
    out = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        out.append(time.perf_counter() - start)
        CPU.append(time.process_time() - cpu)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=os.path.join(HERE, "features_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    wf.set_progress(False)
    results: dict[str, dict] = {}

    cnn = load_mnist_cnn()
    images = mnist_datasets("mnist", flatten=False)[1].tensors[0]
    x = images[:1]
    blocks = wf.features.block_masks(28, 28, 4)
    masks = blocks[torch.randint(0, len(blocks), (100, 3))].any(1)[:, None, None].float()   # [100, 1, 1, 28, 28]
    dec = wf.features.Decomposer(cnn)
    dec.decompose(x, masks)                                                  # warm-up
    with torch.no_grad():
        cd_t = timed(lambda: dec.decompose(x, masks), args.repeats)
        loop_t = timed(lambda: [cnn(x * m[0]) for m in masks], args.repeats)
        batch_t = timed(lambda: cnn(x * masks[:, 0]), args.repeats)
    results["cnn_cd_100_masks"] = {
        "cd_s": statistics.median(cd_t), "100_forwards_s": statistics.median(loop_t),
        "one_batched_forward_s": statistics.median(batch_t),
        "ratio_cd_to_100_forwards": statistics.median([a / b for a, b in zip(cd_t, loop_t)]),
        "ratio_cd_to_batched_forward": statistics.median([a / b for a, b in zip(cd_t, batch_t)])}

    sst, lstm = load_sst2(), load_sst_lstm()
    sentences = [s for s in sst.sentences("test") if len(s) == 30]
    ids = torch.as_tensor(sentences[0])[None]
    words = torch.eye(30)[:, None]                                           # [30, 1, 30]
    ldec = wf.features.Decomposer(lstm)
    ldec.decompose(ids, words)
    with torch.no_grad():
        cd_t = timed(lambda: ldec.decompose(ids, words), args.repeats)
        loop_t = timed(lambda: [lstm(ids) for _ in range(30)], args.repeats)
        batch_t = timed(lambda: lstm(ids.expand(30, 30)), args.repeats)
    results["lstm_cd_30_masks"] = {
        "cd_s": statistics.median(cd_t), "30_forwards_s": statistics.median(loop_t),
        "one_batched_forward_s": statistics.median(batch_t),
        "ratio_cd_to_30_forwards": statistics.median([a / b for a, b in zip(cd_t, loop_t)]),
        "ratio_cd_to_batched_forward": statistics.median([a / b for a, b in zip(cd_t, batch_t)])}

    acd2, fwd2, cpu2 = [], [], []
    for i in range(10):
        xi = images[i:i + 1]
        acd2 += timed(lambda xi=xi: wf.features.acd(cnn, xi), 1)
        cpu2.append(CPU[-1])
        with torch.no_grad():
            fwd2 += timed(lambda xi=xi: cnn(xi), 1)
    results["acd_2d_mnist_block1"] = {"median_s": statistics.median(acd2), "max_s": max(acd2),
                                      "median_cpu_s": statistics.median(cpu2), "images": 10,
                                      "forward_s": statistics.median(fwd2)}

    acd1, cpu1 = [], []
    for s in sentences[:max(3, min(len(sentences), args.repeats))]:
        sid = torch.as_tensor(s)[None]
        acd1 += timed(lambda sid=sid: wf.features.acd(lstm, sid), 1)
        cpu1.append(CPU[-1])
    results["acd_1d_sst_30_tokens"] = {"median_s": statistics.median(acd1), "max_s": max(acd1),
                                       "median_cpu_s": statistics.median(cpu1), "sentences": len(acd1)}
    results["load_average_1min"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=2)
        fh.write("\n")


if __name__ == "__main__":
    main()
