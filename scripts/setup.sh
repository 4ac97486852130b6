#!/usr/bin/env bash
# Set up wherefrom on a fresh machine (Debian or Ubuntu): Debian's Chromium for the browser test of the HTML
# report, then CPU torch 2.13.0 first (so nothing pulls CUDA wheels), then wherefrom with its dev extras
# (pytest, ruff, scikit-learn, playwright). Safe to run again: what is installed already is left as it is.
#
#   bash scripts/setup.sh
#
# WHEREFROM_CHROMIUM overrides where Chromium is expected (default /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")/.."

chromium="${WHEREFROM_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$chromium" ]; then
    echo "setup: Chromium found at $chromium"
elif command -v apt-get >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    # Refresh the package lists only when they do not know chromium yet (a fresh container has none).
    if ! apt-cache policy chromium 2>/dev/null | grep -q "Candidate: [0-9]"; then
        $sudo apt-get update
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends chromium
else
    echo "setup: no Chromium at $chromium and no apt-get: install Chromium yourself for the browser test" >&2
fi

pip install torch==2.13.0 && pip install -e ".[dev]"
