#!/usr/bin/env python
"""Build (or load) the reference model and the LOO and LDS ground truth of a setting, and time it.

    PYTHONPATH=src python scripts/build_ground_truth.py mnist-lr --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

import torch  # noqa: E402

from wherefrom.bench import Workspace, get_setting  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("setting")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--subsets", type=int, default=100)
    ap.add_argument("--no-loo", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ws = Workspace(get_setting(args.setting), cache_dir=args.cache_dir, workers=args.workers)
    times = {"uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    t0 = time.time()
    ws.reference()
    times["reference_s"] = time.time() - t0
    if not args.no_loo:
        t1 = time.time()
        gt = ws.loo()
        times["loo_s"] = time.time() - t1
        times["loo_models"] = len(gt.indices)
    t2 = time.time()
    ws.lds(args.subsets)
    times["lds_s"] = time.time() - t2
    times["total_s"] = time.time() - t0
    times["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    times["cache"] = ws.root
    print(json.dumps(times, indent=2))
    with open(os.path.join(ws.root, "build_times.json"), "w") as fh:
        json.dump(times, fh, indent=2)


if __name__ == "__main__":
    main()
