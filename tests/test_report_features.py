"""Feature-attribution panels of the report: ``wherefrom features`` on the shipped SST-2 LSTM and MNIST CNN.

The numbers embedded in the HTML (``data-*`` attributes) are read back and compared with the library's CD and ACD
run independently in the test, with occlusion recomputed by hand from the model's logits; the page is opened in
headless Chromium (skipped locally without it, like ``test_report_browser.py``).
"""

import io
import json
from collections import defaultdict
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import wherefrom as wf
from wherefrom.cli import app

SENTENCES = ["the movie is not very good", "a wonderful and funny film ."]   # 6 tokens each
TEXT_NAMES = ["negative", "<b>positive</b>"]
IMAGE_BLOCK = 2

TEXT_SPEC = f'''
import torch
from wherefrom.data.sst import load_sst2
from wherefrom.features.models import load_sst_lstm
from wherefrom.report import Spec


def spec():
    sst = load_sst2()
    ids = torch.cat([sst.encode(s) for s in {SENTENCES!r}])
    labels = torch.tensor([0, 1])
    return Spec(model=load_sst_lstm(), train=(ids, labels), test=(ids, labels), class_names={TEXT_NAMES!r},
                name="SST <LSTM>", vocabulary=sst.vocab)
'''

IMAGE_SPEC = '''
from wherefrom.data import mnist_datasets
from wherefrom.features.models import load_mnist_cnn
from wherefrom.report import Spec


def spec():
    train, test = mnist_datasets("mnist", flatten=False, n_train=10, n_test=2)
    return Spec(model=load_mnist_cnn(), train=train, test=test, class_names=[str(d) for d in range(10)])
'''


class Collector(HTMLParser):
    """The ``data-*`` numbers of the feature panels, keyed by test example."""

    def __init__(self):
        super().__init__()
        self.strips = defaultdict(dict)      # (test, method) -> {unit: score}
        self.runs = defaultdict(list)        # test -> [(row, component, score, units)]
        self.levels = defaultdict(dict)      # test -> {level: (kind, [(component, score, units)])}
        self.maps = {}                       # (test, method) -> (grid, values)
        self.article = self.strip = self.level = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        units = lambda: [int(u) for u in a["data-units"].split(",")] if a.get("data-units") else []  # noqa: E731
        if tag == "article" and "fa-card" in cls:
            self.article = int(a["data-test-index"])
        elif "fa-strip" in cls:
            self.strip = a["data-method"]
        elif "fa-tok" in cls:
            self.strips[self.article, self.strip][int(a["data-unit"])] = float(a["data-score"])
        elif "fa-run" in cls and "data-row" in a:
            self.runs[self.article].append((int(a["data-row"]), int(a["data-component"]), float(a["data-score"]),
                                            units()))
        elif tag == "tr" and "fa-level" in cls:
            self.level = int(a["data-level"])
            self.levels[self.article][self.level] = (a["data-kind"], [])
        elif "fa-comp" in cls:
            self.levels[self.article][self.level][1].append((int(a["data-component"]), float(a["data-score"]),
                                                             units()))
        elif "fa-map" in cls:
            grid = tuple(int(g) for g in a["data-grid"].split(","))
            self.maps[self.article, a["data-method"]] = (grid, np.array(json.loads(a["data-scores"])))


def _collect(path):
    c = Collector()
    c.feed(path.read_text(encoding="utf-8"))
    return c


def _run(tmp_path_factory, name, spec_text, *args):
    folder = tmp_path_factory.mktemp(name)
    spec = folder / "spec.py"
    spec.write_text(spec_text)
    out = folder / "out"
    res = CliRunner().invoke(app, ["features", str(spec), "--out", str(out), "--baselines", "--ig-steps", "8",
                                   "--quiet", *args])
    assert res.exit_code == 0, res.output
    return spec, out


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    return _run(tmp_path_factory, "text", TEXT_SPEC, "--test", "0:2")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return _run(tmp_path_factory, "image", IMAGE_SPEC, "--test", "1", "--block-size", str(IMAGE_BLOCK))


def _assert_levels_equal(shown, h):
    assert sorted(shown) == list(range(len(h.levels)))
    for k, lv in enumerate(h.levels):
        kind, comps = shown[k]
        assert kind == lv.kind
        flat = lv.components.reshape(-1)
        expected = [(cid, lv.scores[cid], np.flatnonzero(flat == cid).tolist()) for cid in sorted(lv.scores)]
        assert [(c, u) for c, _, u in comps] == [(c, u) for c, _, u in expected], k
        np.testing.assert_allclose([s for _, s, _ in comps], [s for _, s, _ in expected], rtol=1e-9, atol=1e-12)


def test_text_panel_shows_the_cd_and_acd_of_the_model(text_run):
    from wherefrom.data.sst import load_sst2
    from wherefrom.features.models import load_sst_lstm

    _, out = text_run
    shown = _collect(out / "report.html")
    sst, lstm = load_sst2(), load_sst_lstm()
    for j, sentence in enumerate(SENTENCES):
        ids = sst.encode(sentence)
        T = ids.shape[1]
        target = int(lstm(ids)[0].argmax())
        # CD of each word alone, target logit against the other (binary) logit
        rel, irrel = wf.features.cd(lstm, ids, torch.eye(T)[:, None])
        torch.testing.assert_close(rel + irrel, lstm(ids).expand(T, 1, 2), rtol=1e-5, atol=1e-5)
        expected = (rel[:, 0, target] - rel[:, 0, 1 - target]).double().numpy()
        strip = shown.strips[j, "cd"]
        assert sorted(strip) == list(range(T))
        np.testing.assert_allclose([strip[t] for t in range(T)], expected, rtol=1e-6, atol=1e-7)
        # occlusion by hand: F(x) − F(x with word t replaced by token 0)
        with torch.no_grad():
            def f(z, c=target):
                logits = lstm(z)[0]
                return float(logits[c] - logits[1 - c])
            occ = []
            for t in range(T):
                z = ids.clone()
                z[0, t] = 0
                occ.append(f(ids) - f(z))
        np.testing.assert_allclose([shown.strips[j, "occlusion"][t] for t in range(T)], occ, rtol=1e-5, atol=1e-6)
        ig = wf.features.integrated_gradients(lstm, ids, target, steps=8, output="logit", contrast=True)[0]
        np.testing.assert_allclose([shown.strips[j, "integrated-gradients"][t] for t in range(T)], ig.numpy(),
                                   rtol=1e-5, atol=1e-6)
        # the ACD hierarchy: every level, and the collapsed rows of the tree
        h = wf.features.acd(lstm, ids, target, labels=sst.decode(ids))
        _assert_levels_equal(shown.levels[j], h)
        rows = h.text_rows()
        expected_runs = sorted((r, cid, s, np.flatnonzero(comps == cid).tolist())
                               for r, (comps, scores) in enumerate(rows) for cid, s in scores.items())
        got = sorted(shown.runs[j])
        assert [(r, c, u) for r, c, _, u in got] == [(r, c, u) for r, c, _, u in expected_runs]
        np.testing.assert_allclose([s for *_, s, _ in got], [s for *_, s, _ in expected_runs], rtol=1e-9)
    html = (out / "report.html").read_text()
    assert "&lt;b&gt;positive&lt;/b&gt;" in html and "<b>positive</b>" not in html
    assert "<title>SST &lt;LSTM&gt;</title>" in html


def test_image_panel_shows_the_cd_and_acd_of_the_model(image_run):
    from wherefrom.data import mnist_datasets
    from wherefrom.features.models import load_mnist_cnn

    _, out = image_run
    shown = _collect(out / "report.html")
    cnn = load_mnist_cnn()
    x = mnist_datasets("mnist", flatten=False, n_train=10, n_test=2)[1].tensors[0][1:2]
    target = int(cnn(x)[0].argmax())
    masks = wf.features.block_masks(28, 28, IMAGE_BLOCK).float()                 # [196, 28, 28]
    rel, _ = wf.features.cd(cnn, x, masks[:, None, None])
    grid, values = shown.maps[1, "cd"]
    assert grid == (14, 14)
    np.testing.assert_allclose(values.reshape(-1), rel[:, 0, target].double().numpy(), rtol=1e-6, atol=1e-7)
    # occlusion by hand, a few blocks
    with torch.no_grad():
        full = float(cnn(x)[0, target])
        _, occ = shown.maps[1, "occlusion"]
        for b in (0, 77, 105, 195):
            z = x.clone()
            z[0, 0, masks[b].bool()] = 0
            np.testing.assert_allclose(occ.reshape(-1)[b], full - float(cnn(z)[0, target]), rtol=1e-5, atol=2e-5)
    _, gxi = shown.maps[1, "gradient-x-input"]
    xg = x.clone().requires_grad_(True)
    cnn(xg)[0, target].backward()
    pix = (x * xg.grad)[0, 0]
    np.testing.assert_allclose(gxi, pix.reshape(14, 2, 14, 2).sum((1, 3)).double().numpy(), rtol=1e-5, atol=1e-6)
    h = wf.features.acd(cnn, x, target, block_size=IMAGE_BLOCK)
    _assert_levels_equal(shown.levels[1], h)
    assert h.levels[-1].scores and len(shown.levels[1][len(h.levels) - 1][1]) == 1   # the final merge: one blob


def test_report_rerenders_features_without_the_model(text_run, tmp_path):
    spec, out = text_run
    spec.unlink()
    res = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "again.html")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "again.html").read_bytes() == (out / "report.html").read_bytes()


@pytest.mark.parametrize(("args", "code", "words"), [
    (["--method", "shapley"], 2, "--method 'shapley'"),
    (["--target", "5"], 2, "--target 5 is out of range"),
    (["--target", "best"], 2, "--target 'best'"),
    (["--test", "7"], 2, "7"),
])
def test_bad_options_exit_with_usage_errors(tmp_path, args, code, words):
    spec = tmp_path / "spec.py"
    spec.write_text(TEXT_SPEC)
    res = CliRunner().invoke(app, ["features", str(spec), "--out", str(tmp_path / "o"), "-q", *args])
    assert res.exit_code == code, res.output
    assert words in res.output


def test_tabular_inputs_are_refused_with_a_message(tmp_path):
    from report_specs import TABULAR

    spec = tmp_path / "tab.py"
    spec.write_text(TABULAR)
    res = CliRunner().invoke(app, ["features", str(spec), "--out", str(tmp_path / "o"), "-q"])
    assert res.exit_code == 5, res.output
    assert "token ids [T] or an image" in res.output


def test_panels_render_in_headless_chromium(text_run, image_run, tmp_path):
    from PIL import Image

    from test_report_browser import CHROMIUM, LAUNCH_ARGS, _require_browser

    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            for (_, out), panel, n in ((text_run, "feature-text", 2), (image_run, "feature-image", 1)):
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                problems, requests = [], []
                page.on("console", lambda m, problems=problems: problems.append(m.text) if m.type in (
                    "error", "warning") else None)
                page.on("pageerror", lambda e, problems=problems: problems.append(str(e)))
                page.route("**/*", lambda route, requests=requests: route.continue_() if route.request.url.startswith(
                    ("file:", "data:")) else (requests.append(route.request.url), route.abort()))
                page.goto((out / "report.html").as_uri(), wait_until="load")
                section = page.locator(f"#panel-{panel}")
                assert section.is_visible()
                assert section.locator("article.fa-card").count() == n
                assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
                assert page.evaluate("document.scripts.length") == 0
                if panel == "feature-text":
                    strip = section.locator('article[data-test-index="0"] .fa-strip[data-method="cd"] .fa-tok')
                    assert strip.count() == 6 and strip.first.inner_text() == "the"
                    assert section.locator('article[data-test-index="0"] .fa-run').first.is_visible()
                    section.locator("details.fa-details summary").first.click()     # opens without script
                    assert section.locator("tr.fa-level").first.is_visible()
                else:
                    assert section.locator("figure.fa-map").count() == 4
                shot = np.asarray(Image.open(io.BytesIO(section.screenshot())).convert("L"), dtype=float)
                assert shot.std() > 10, "the panel is blank"
                assert problems == [], problems
                assert requests == [], requests
                page.close()
        finally:
            browser.close()


def test_corrupt_features_file_exits_with_results_error(tmp_path):
    (tmp_path / "features.json").write_text('{"format": 1, "entries": [')
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 7, res.output
    assert "features.json" in res.output and "wherefrom features" in res.output
