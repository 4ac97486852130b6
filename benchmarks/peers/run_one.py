"""Run one library's counterpart of one method on one setting, timed, in this process; save scores and timing.

Usage: ``python run_one.py SETTING METHOD LIBRARY OUT_PREFIX``. Writes ``OUT_PREFIX.npy`` (``[n_train, n_test]``
float32, wherefrom's sign convention) and ``OUT_PREFIX.json`` (wall and CPU seconds of fit + score — CPU time of
all the process's threads, the robust measure on a shared machine —, peak RSS, notes).
The timed region starts after the data and model are in memory and ends when the dense score matrix is.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WHEREFROM_PROGRESS", "0")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np
import torch
from common import load_context

MODULES = {"wherefrom": "libs.wf", "reference": "libs.reference", "dattri": "libs.dattri_",
           "kronfluence": "libs.kronfluence_", "pydvl": "libs.pydvl_", "captum": "libs.captum_",
           "traker": "libs.traker_"}


def main(setting: str, method: str, library: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ctx = load_context(setting)
    fn = importlib.import_module(MODULES[library]).METHODS[method]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0, c0 = time.perf_counter(), time.process_time()
        scores, info = fn(ctx)
        scores = torch.as_tensor(scores).detach()
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    scores = scores.to(torch.float64).cpu().numpy()
    np.save(out + ".npy", scores.astype(np.float32))
    info = dict(info)
    msgs = sorted({str(w.message).split("\n")[0][:200] for w in caught})
    record = {"setting": setting, "method": method, "library": library, "seconds": seconds,
              "cpu_seconds": cpu_seconds,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "finite": bool(np.isfinite(scores).all()), "shape": list(scores.shape), "info": info,
              "warnings": msgs[:5]}
    with open(out + ".json", "w") as fh:
        json.dump(record, fh, indent=1)
    print(json.dumps({k: record[k] for k in ("setting", "method", "library", "seconds", "cpu_seconds", "finite")}))


if __name__ == "__main__":
    main(*sys.argv[1:5])
