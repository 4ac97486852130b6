"""The documentation site builds with ``mkdocs build --strict``: a broken reference, link or docstring fails CI."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "wherefrom"


def public_modules() -> list[str]:
    """Dotted names of every module and package of ``src/wherefrom`` whose path has no ``_``-prefixed part."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if not any(p.startswith("_") for p in parts):
            out.append(".".join(parts))
    return out


def test_mkdocs_build_is_strict_clean_and_covers_every_public_module(tmp_path):
    site = tmp_path / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    modules = public_modules()
    assert "wherefrom.compat.torch_influence" in modules and "wherefrom.task" in modules
    for dotted in modules:
        page = site / "reference" / pathlib.Path(*dotted.split(".")) / "index.html"
        assert page.exists(), f"no API page for {dotted}"
        assert f"id=\"{dotted}\"" in page.read_text(), f"the API page of {dotted} does not render the module"
    for name in ("migration", "gallery", "conventions"):
        assert (site / name / "index.html").exists()
    assert "LiSSAInfluenceModule" in (site / "reference/wherefrom/compat/torch_influence/index.html").read_text()
