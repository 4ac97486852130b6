#!/usr/bin/env bash
# Create benchmarks/peers/.venv (never the project's environment) with torch 2.13.0 (CPU), the pinned peer
# libraries and wherefrom from this working tree (editable). Safe to rerun: an existing .venv is reused.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
VENV="$HERE/.venv"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
# 1. torch first, alone: pip takes the local CPU wheel, so nothing below can pull a CUDA build.
"$PIP" install -q "torch==2.13.0"
# 2. Check that no peer would replace torch (the constraints pin it and every transitive dependency).
if "$PIP" install --dry-run -c "$HERE/constraints.txt" -r "$HERE/requirements.txt" 2>/dev/null \
    | grep -E "^Would install" | grep -qE "(^| )torch-"; then
  echo "a peer library would replace torch 2.13.0; aborting" >&2
  exit 1
fi
# 3. The peers, pinned, then wherefrom itself from the working tree.
"$PIP" install -q -c "$HERE/constraints.txt" -r "$HERE/requirements.txt"
"$PIP" install -q -c "$HERE/constraints.txt" -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
for name in ["torch", "dattri", "kronfluence", "pyDVL", "captum", "traker", "wherefrom"]:
    print(f"{name}=={md.version(name)}")
PY
