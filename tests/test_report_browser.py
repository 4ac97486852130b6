"""End to end in a real browser: ``wherefrom attribute`` on the shipped MNIST subset with a small CNN, the report
opened by headless Chromium (Debian's ``chromium``, driven by playwright) with the network cut off.

Locally the test skips when Chromium or playwright is missing; under ``CI=true`` it fails and says how to install
them (``bash scripts/setup.sh``).
"""

import io
import os
import pathlib
import runpy

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from wherefrom.cli import app

CHROMIUM = os.environ.get("WHEREFROM_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS_LABEL = "<script>window.__wf_xss = 1</script>seven"
TEST, K = list(range(6)), 5

SPEC = f'''
import torch
import torch.nn.functional as F
from torch import nn
from wherefrom.data import mnist_datasets
from wherefrom.data.shipped import NORMALISATION
from wherefrom.report import Spec

NAMES = ["zero", "one", "two", "three", "four", "five", "six", {XSS_LABEL!r}, "eight", "nine"]


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 5), nn.Conv2d(4, 8, 5)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def data():
    return mnist_datasets("mnist", flatten=False, n_train=300, n_test=40)


def train_model(path):
    torch.manual_seed(0)
    model, (train, _) = SmallCNN(), data()
    X, y = train.tensors
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(8):
        for b in range(0, len(X), 50):
            opt.zero_grad()
            F.cross_entropy(model(X[b:b + 50]), y[b:b + 50]).backward()
            opt.step()
    torch.save(model.state_dict(), path)


def spec():
    train, test = data()
    model = SmallCNN()
    model.load_state_dict(torch.load(CHECKPOINT, weights_only=True))
    mean, std = NORMALISATION["mnist"]
    return Spec(model=model.eval(), train=train, test=test, class_names=NAMES, name="MNIST <CNN> & friends",
                denormalize=lambda x: x * std + mean)
'''


def _require_browser():
    missing = [] if os.path.exists(CHROMIUM) else [f"Chromium at {CHROMIUM}"]
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright Python package")
    if missing:
        message = (f"The browser test needs {' and '.join(missing)}. Install with `bash scripts/setup.sh` "
                   "(it runs `apt-get install -y chromium` on Debian and `pip install -e '.[dev]'`).")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def chromium():
    """Checked before the (slower) MNIST run: skip locally, fail under CI=true, when the browser is missing."""
    _require_browser()
    return CHROMIUM


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mnist")
    checkpoint = folder / "cnn.pt"
    spec = folder / "mnist_spec.py"
    spec.write_text(SPEC.replace("CHECKPOINT", repr(str(checkpoint))))
    runpy.run_path(str(spec))["train_model"](checkpoint)
    out = folder / "out"
    res = CliRunner().invoke(app, ["attribute", str(spec), "--method", "ekfac", "--test", "0:6", "--top-k", str(K),
                                   "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return spec, out


def _open(report, tmp_path):
    """Load ``report`` in a fresh headless Chromium profile, every non-file request aborted and recorded."""
    from playwright.sync_api import sync_playwright

    attempted = []

    def block(route):
        if route.request.url.startswith(("file:", "data:")):
            route.continue_()
        else:
            attempted.append(route.request.url)
            route.abort()

    p = sync_playwright().start()
    context = p.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS,
        viewport={"width": 1366, "height": 900}, offline=True)
    context.route("**/*", block)
    context.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else attempted.append(r.url))
    page = context.new_page()
    page.goto(report.as_uri(), wait_until="load")
    return p, context, page, attempted


def test_report_in_headless_chromium(chromium, mnist_run, tmp_path):
    _, out = mnist_run
    scores = load_file(out / "scores.safetensors")["scores"]
    assert scores.shape == (300, len(TEST))
    p, context, page, attempted = _open(out / "report.html", tmp_path)
    try:
        shot = page.screenshot(full_page=True)
        if os.environ.get("WHEREFROM_REPORT_SCREENSHOT"):  # keep it to look at
            pathlib.Path(os.environ["WHEREFROM_REPORT_SCREENSHOT"]).write_bytes(shot)
        pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("L"), dtype=np.float64)
        assert pixels.shape[0] > 900 and pixels.std() > 20, "the screenshot is blank"

        articles = page.locator("article.test-example")
        assert articles.count() == len(TEST)
        for j, t in enumerate(TEST):
            article = page.locator(f'article[data-test-index="{t}"]')
            for role, sign in (("helpful", 1.0), ("harmful", -1.0)):
                figures = article.locator(f'figure[data-role="{role}"]')
                assert figures.count() == K
                assert article.locator(f'figure[data-role="{role}"] img').count() == K
                shown = [int(i) for i in figures.evaluate_all("fs => fs.map(f => f.dataset.trainIndex)")]
                expected = torch.topk(sign * scores[:, j], K).indices.tolist()   # independent of the saved top-k
                assert shown == expected, (t, role)
        decoded = page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert decoded, "an inline image did not decode"
        # the <script> label is text, nothing ran, the page has no script at all
        assert page.evaluate("window.__wf_xss") is None
        assert page.evaluate("document.scripts.length") == 0
        assert page.locator('article[data-test-index="0"] .true-label').inner_text() == XSS_LABEL
        assert "MNIST <CNN> & friends" in page.title()
        for panel in ("examples", "self-influence", "class-heatmap"):
            assert page.locator(f"#panel-{panel}").is_visible()
    finally:
        context.close()
        p.stop()
    assert attempted == [], f"the report tried to reach the network: {attempted}"


def test_report_rerenders_the_same_file(mnist_run, tmp_path):
    spec, out = mnist_run
    for needed_only_to_compute in (spec, spec.parent / "cnn.pt"):
        needed_only_to_compute.unlink(missing_ok=True)
    res = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "again.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again.html").read_bytes() == (out / "report.html").read_bytes()
    size = (out / "report.html").stat().st_size
    assert 20_000 < size < 5_000_000
