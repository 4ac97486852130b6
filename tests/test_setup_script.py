"""``scripts/setup.sh`` (the README's set-up command) installs Chromium only when it is missing, and is idempotent.

``apt-get``, ``apt-cache``, ``sudo``, ``id`` and ``pip`` are replaced by logging stand-ins, so nothing is installed.
"""

import os
import pathlib
import stat
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]

SHIM = """#!/bin/sh
echo "{name} $*" >> "$SHIM_LOG"
{body}
"""


def _shims(folder: pathlib.Path, uid: int, lists_fresh: bool) -> None:
    bodies = {
        "apt-cache": f'echo "chromium:"; echo "  Candidate: {"150.0-1" if lists_fresh else "(none)"}"',
        "apt-get": 'case "$*" in *install*) touch "$FAKE_CHROMIUM"; chmod +x "$FAKE_CHROMIUM";; esac',
        "sudo": '"$@"',
        "id": f"echo {uid}",
        "pip": "",
    }
    for name, body in bodies.items():
        path = folder / name
        path.write_text(SHIM.format(name=name, body=body))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _run(tmp_path, uid=0, lists_fresh=False):
    shims, log, chromium = tmp_path / "bin", tmp_path / "log.txt", tmp_path / "chromium"
    shims.mkdir(exist_ok=True)
    _shims(shims, uid, lists_fresh)
    env = {"PATH": f"{shims}:/usr/bin:/bin", "SHIM_LOG": str(log), "FAKE_CHROMIUM": str(chromium),
           "WHEREFROM_CHROMIUM": str(chromium)}
    res = subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return [c for c in calls if not c.startswith("id")]


def test_installs_chromium_once_then_only_pip(tmp_path):
    first = _run(tmp_path)
    assert first == ["apt-cache policy chromium", "apt-get update",
                     "apt-get install -y --no-install-recommends chromium",
                     "pip install torch==2.13.0", "pip install -e .[dev]"]
    assert os.access(tmp_path / "chromium", os.X_OK)
    second = _run(tmp_path)                      # Chromium is there now: no apt at all
    assert second == ["pip install torch==2.13.0", "pip install -e .[dev]"]


def test_no_update_when_lists_know_chromium_and_sudo_when_not_root(tmp_path):
    calls = _run(tmp_path, uid=1000, lists_fresh=True)
    assert calls[:3] == ["apt-cache policy chromium", "sudo apt-get install -y --no-install-recommends chromium",
                         "apt-get install -y --no-install-recommends chromium"]
