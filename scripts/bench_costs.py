"""Make the rough cost table ``src/wherefrom/_datafiles/bench_costs.json`` from ``wherefrom bench`` JSON outputs.

    python scripts/bench_costs.py RESULT.json [RESULT.json ...] --machine "2-core x86-64 CPU, shared" \
        [--ground-truth mnist-lr.loo=587 ...] [--alias fmnist-mlp=mnist-mlp] [--note "..."]

Per setting it keeps, for each method without an error, ``fit_s``, ``score_s`` and the number of test points they
were measured on (later files win), and the ground-truth build times the JSON records (``build_s`` of LOO over
every train point and of 100 LDS subsets, ``train_s`` of the reference and of the noisy-label reference).
``--ground-truth setting.part=seconds`` gives times measured elsewhere; ``--alias`` makes a setting reuse
another's numbers (same model and data sizes). Rows measured with options other than the setting's defaults keep
them in ``options`` (``wherefrom bench --list`` marks them).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from wherefrom.bench.results import now_iso  # noqa: E402
from wherefrom.bench.settings import SETTINGS  # noqa: E402

OUT = ROOT / "src" / "wherefrom" / "_datafiles" / "bench_costs.json"


def _rows(data: dict) -> list[tuple[str, dict]]:
    """``(method, {"fit_s", "score_s", "n_test", "options"})`` of every successful row of a bench JSON."""
    name = data["setting"]["name"]
    defaults = SETTINGS[name].method_options if name in SETTINGS else {}
    user = data.get("options", {}).get("options", {})
    out = []
    for r in data["rows"]:
        if r.get("error") or r.get("fit_s") is None or r.get("score_s") is None:
            continue
        opts = r["options"] if "options" in r else {**defaults.get(r["method"], {}), **user.get(r["method"], {})}
        extra = {k: v for k, v in opts.items() if defaults.get(r["method"], {}).get(k, object()) != v}
        out.append((r["method"], {"fit_s": round(float(r["fit_s"]), 2), "score_s": round(float(r["score_s"]), 2),
                                  "n_test": data["setting"]["n_test"], **({"options": extra} if extra else {})}))
    return out


def _ground_truth(data: dict) -> dict[str, float]:
    """Build times a bench JSON records (older JSONs, without ``load_s``, recorded the load time: skipped)."""
    gt, s = data.get("ground_truth", {}), data["setting"]
    out = {}
    if "load_s" not in (gt.get("loo") or gt.get("lds") or {"load_s": None}):
        return out
    if (gt.get("reference") or {}).get("train_s"):
        out["reference"] = gt["reference"]["train_s"]
    loo = gt.get("loo") or {}
    if loo.get("build_s") and loo.get("n_models") == s["n_train"]:
        out["loo"] = loo["build_s"]
    lds = gt.get("lds") or {}
    if lds.get("build_s") and lds.get("n_subsets") == 100:
        out["lds"] = lds["build_s"]
    if (gt.get("auc") or {}).get("train_s"):
        out["auc"] = gt["auc"]["train_s"]
    return {k: round(float(v), 1) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="JSON files written by wherefrom bench")
    ap.add_argument("--machine", required=True, help="one line describing the machine")
    ap.add_argument("--ground-truth", action="append", default=[], help="setting.part=seconds")
    ap.add_argument("--alias", action="append", default=[], help="setting=other_setting")
    ap.add_argument("--note", action="append", default=[], help="a note printed under the table")
    args = ap.parse_args()
    settings: dict[str, dict] = {}
    for path in args.results:
        data = json.loads(pathlib.Path(path).read_text())
        name = data["setting"]["name"]
        entry = settings.setdefault(name, {"n_test": SETTINGS[name].n_test, "ground_truth": {}, "methods": {},
                                           "sources": []})
        entry["ground_truth"].update(_ground_truth(data))
        entry["methods"].update(dict(_rows(data)))
        entry["sources"].append((data.get("run") or {}).get("command") or pathlib.Path(path).name)
    for item in args.ground_truth:
        lhs, value = item.split("=", 1)
        name, part = lhs.rsplit(".", 1)
        settings.setdefault(name, {"n_test": SETTINGS[name].n_test, "ground_truth": {}, "methods": {},
                                   "sources": []})["ground_truth"][part] = float(value)
    for item in args.alias:
        name, other = item.split("=", 1)
        settings[name] = {"as": other}
    table = {"machine": args.machine, "made": now_iso(), "notes": args.note,
             "settings": dict(sorted(settings.items()))}
    OUT.write_text(json.dumps(table, indent=1, sort_keys=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
