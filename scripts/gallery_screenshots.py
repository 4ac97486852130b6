"""Regenerate the report screenshots of docs/gallery.md (headless Chromium via playwright; no network).

    PYTHONPATH=src python scripts/gallery_screenshots.py            # writes docs/screenshots/*.png
    PYTHONPATH=src python scripts/gallery_screenshots.py --work /tmp/gallery --chromium /usr/bin/chromium

It runs, on the shipped models and data:

1. ``wherefrom attribute`` with EK-FAC on the shipped MNIST CNN and the first ``--n-train`` training images
   (through a TOML spec that passes ``n_train`` to ``wherefrom.report.shipped_specs:mnist_cnn``), then
   ``wherefrom features`` on the same spec and folder, so one report holds the data- and feature-attribution panels;
2. ``wherefrom features`` on the shipped SST-2 LSTM (first test sentences, with the baselines);

and screenshots single elements of the two reports. PNGs are reduced to a 256-colour palette to stay small.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOML = '''spec = "wherefrom.report.shipped_specs:mnist_cnn"
name = "MNIST CNN (shipped), EK-FAC on {n_train} training images"

[kwargs]
n_train = {n_train}
'''
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def wherefrom(*args: str) -> None:
    """Run the ``wherefrom`` command line of this checkout."""
    cmd = [sys.executable, "-m", "wherefrom", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def save_png(data: bytes, path: Path, width: int | None = None) -> None:
    """Write a screenshot as a palette PNG (optionally scaled down to ``width`` pixels)."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    if width and img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.Resampling.LANCZOS)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} ({path.stat().st_size // 1024} kB)")


def shoot(report: Path, shots: list[tuple[str, str, str | None]], out: Path, chromium: str, width: int) -> None:
    """``shots``: (CSS selector, file name, selector of a <details> to open first or None)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(("file:", "data:")) else r.abort())
        page.goto(report.as_uri(), wait_until="load")
        page.add_style_tag(content="header.top { position: static !important; }")   # no sticky header on crops
        for selector, name, open_first in shots:
            if open_first:
                page.locator(open_first).first.evaluate("d => d.open = true")
            save_png(page.locator(selector).first.screenshot(), out / name)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default="/tmp/wherefrom-gallery", help="folder for the runs")
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshots"), help="where the PNGs go")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--n-train", type=int, default=500)
    parser.add_argument("--width", type=int, default=1100, help="browser viewport width")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    spec = work / "mnist.toml"
    spec.write_text(TOML.format(n_train=args.n_train))
    mnist = work / "mnist"
    wherefrom("attribute", str(spec), "--method", "ekfac", "--test", "0:4", "--top-k", "8", "--out", str(mnist),
              "-q")
    wherefrom("features", str(spec), "--test", "0:2", "--baselines", "--out", str(mnist), "-q")
    sst = work / "sst"
    wherefrom("features", "wherefrom.report.shipped_specs:sst_lstm", "--test", "0:3", "--baselines", "--out",
              str(sst), "-q")

    shoot(mnist / "report.html", [
        ("article.test-example", "report-test-example.png", None),
        ("#panel-self-influence", "report-self-influence.png", None),
        ("#panel-class-heatmap", "report-class-heatmap.png", None),
        ("#panel-feature-image article.fa-card", "features-image.png", None),
    ], out, args.chromium, args.width)
    shoot(sst / "report.html", [
        ("#panel-feature-text article.fa-card", "features-text.png", None),
        ("#panel-feature-text table.fa-levels", "features-text-levels.png", "#panel-feature-text details"),
    ], out, args.chromium, args.width)


if __name__ == "__main__":
    main()
