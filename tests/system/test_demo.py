"""`make demo` in a real browser: draw a digit, load a test image or noise, switch runs.

Two networks of ours trained on the real MNIST into a fresh store, as a user trains them
(the classic 784-16-16-10 and a 784-100-10 ReLU net), then `python -m pipeline.serve.demo`
on the classic one and Debian's Chromium. What the page shows is checked against the
logged model itself, loaded as serving loads it: the answer and the ten output
activations for the very pixels the page sent. Screenshots go to test-artifacts/demo/.
"""

from __future__ import annotations

import io
import json
import os
import urllib.error
import urllib.request

import matplotlib.image
import mlflow
import numpy as np
import pytest
from helpers import free_port, real_mnist_or_skip, run_app, wait_for
from helpers.browser import browser_or_skip, chromium
from scipy import ndimage

from pipeline.paths import PROJECT_ROOT

pytestmark = pytest.mark.e2e
SHOTS = PROJECT_ROOT / "test-artifacts" / "demo"


def _train(tmp, name, *overrides):
    done = run_app(
        *overrides,
        "baseline=none",
        "stages=[download,preprocess,train]",
        f"paths.mlruns_dir={tmp / 'mlruns'}",
        f"paths.data_dir={tmp / 'data'}",
        f"data.mirrors=[{real_mnist_or_skip(os.environ.get('PIPELINE_DATA_MIRROR'))}]",
        f"hydra.run.dir={tmp / name}",
        env={"MLFLOW_TRACKING_URI": None, "PIPELINE_DATA_MIRROR": None},
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    browser_or_skip()
    tmp = tmp_path_factory.mktemp("demo")
    _train(tmp, "classic", "train.epochs=3")
    _train(
        tmp,
        "wide",
        "model.hidden_sizes=[100]",
        "model.activation=relu",
        "model.cost=cross_entropy",
        "model.init=he",
        "train.learning_rate=0.1",
        "train.epochs=2",
    )
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    runs = {
        r.data.params["model.activation"]: r.info.run_id
        for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
    }
    port = free_port()
    log = tmp / "demo.log"
    server = run_app(
        "--port",
        port,
        "--mlruns",
        tmp / "mlruns",
        module="pipeline.serve.demo",
        env={"MLFLOW_TRACKING_URI": None, "RUN_ID": runs["sigmoid"]},
        popen=True,
        log=log,
    )
    try:
        wait_for("make demo's link", lambda: "demo: http" in log.read_text(), server, log=log)
        yield {"url": f"http://127.0.0.1:{port}", "runs": runs, "uri": uri}
    finally:
        server.terminate()
        server.wait(timeout=60)


@pytest.fixture(scope="module")
def page(demo):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.set_default_timeout(60_000)
        page.goto(demo["url"])
        page.wait_for_function("() => window.demo && window.demo.last")
        yield page


def network(demo, run_id):
    """The run's network, loaded as `mlflow models serve` loads it."""
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(demo["uri"])
    try:
        return mlflow.pyfunc.load_model(f"runs:/{run_id}/model").unwrap_python_model().net
    finally:
        mlflow.set_tracking_uri(before)


def shown(page) -> dict:
    """What the page shows now: the answer, the ten outputs, the pixels it sent."""
    return page.evaluate(
        """() => ({
            answer: document.getElementById('answer').textContent,
            outputs: [...document.querySelectorAll('#outputs li')].map(li => +li.dataset.value),
            input: window.demo.last.input,
            hidden: window.demo.last.hidden.map(h => h.units),
            run: window.demo.runId,
        })"""
    )


def settle(page, action) -> dict:
    """Do action, then wait until the page shows the answer to it (and to nothing later)."""
    page.evaluate("() => { window.demo.seen = window.demo.last; }")
    action()
    page.wait_for_function("() => window.demo.last !== window.demo.seen && !window.demo.busy")
    return shown(page)


def check_against_the_model(page, demo, run_id) -> dict:
    """The page's answer, outputs, hidden activations and weight images are the logged
    network's, for the pixels the page sent."""
    now = shown(page)
    assert now["run"] == run_id
    net = network(demo, run_id)
    layers = net.activations(np.asarray([now["input"]], dtype=np.float32))
    assert int(now["answer"]) == int(np.argmax(layers[-1][0]))
    np.testing.assert_allclose(now["outputs"], layers[-1][0], atol=1e-4)
    for shown_units, a in zip(now["hidden"], layers[1:-1]):
        np.testing.assert_allclose(shown_units, a[0], atol=1e-4)
    with urllib.request.urlopen(f"{demo['url']}/api/runs/{run_id}/weights?units=0,5") as r:
        weights = json.loads(r.read())
    np.testing.assert_allclose(weights["weights"], net.weights[0][:, [0, 5]].T, atol=1e-4)
    return now


def lit(page) -> list[dict]:
    """How brightly each drawn unit is lit, as a person sees it: the luminance of the pixels
    at its centre against the network panel's own background, from a screenshot (0: the unit
    is as empty as the panel, 1: black on white or white on black)."""
    units = page.evaluate(
        """() => {
            const panel = document.getElementById('network').getBoundingClientRect();
            return [...document.querySelectorAll('#network circle[data-unit]')].map(c => {
                const box = c.getBoundingClientRect();
                return { layer: +c.dataset.layer, unit: +c.dataset.unit, value: +c.dataset.value,
                         x: box.x + box.width / 2 - panel.x, y: box.y + box.height / 2 - panel.y };
            });
        }"""
    )
    image = matplotlib.image.imread(io.BytesIO(page.locator("#network").screenshot()))
    luminance = image[..., :3] @ np.array([0.2126, 0.7152, 0.0722])
    background = luminance[12:22, 12:22].mean()  # a blank corner of the panel
    for u in units:
        x, y = round(u["x"]), round(u["y"])
        u["lit"] = abs(luminance[y - 1 : y + 2, x - 1 : x + 2].mean() - background)
    return units


def check_lit_as_active(page, answer: int):
    """Active units are drawn bright, inactive ones nearly empty, in every layer (unbounded
    activations relative to the layer's largest); the answer stands out among the outputs."""
    units = lit(page)
    for layer in {u["layer"] for u in units}:
        shown_units = [u for u in units if u["layer"] == layer]
        scale = max(1.0, *(u["value"] for u in shown_units))
        for a in shown_units:
            for b in shown_units:
                if a["value"] - b["value"] > 0.2 * scale:  # more active: lit more brightly
                    assert a["lit"] > b["lit"] + 0.05, (layer, a, b)
    outputs = {u["unit"]: u for u in units if u["layer"] == max(u["layer"] for u in units)}
    winner = outputs[answer]
    assert winner["lit"] == max(u["lit"] for u in outputs.values())
    assert winner["lit"] > 0.6 * winner["value"], winner  # lit as strongly as it is active
    for u in outputs.values():
        if u["value"] < 0.05:
            assert u["lit"] < 0.15, u  # an inactive output is nearly empty
    label = page.locator(f"#network text[data-digit='{answer}']")
    other = page.locator(f"#network text[data-digit='{(answer + 1) % 10}']")
    assert label.evaluate("t => getComputedStyle(t).fontWeight") == "700"
    size = "t => parseFloat(getComputedStyle(t).fontSize)"
    assert label.evaluate(size) > other.evaluate(size)  # the answer's digit labelled larger


def test_a_drawn_one_is_made_a_training_digit_and_the_classic_net_reads_a_1(demo, page):
    page.click("#clear")
    box = page.locator("#canvas").bounding_box()
    x, top = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.15

    def stroke():
        page.mouse.move(x, top)
        page.mouse.down()
        for i in range(1, 21):
            page.mouse.move(x + i * 0.6, top + i * box["height"] * 0.035)
        page.mouse.up()

    settle(page, stroke)
    now = check_against_the_model(page, demo, demo["runs"]["sigmoid"])
    assert now["answer"] == "1"
    # Preprocessed as MNIST's digits: 20 pixels tall, centre of mass at the field's centre.
    image = np.asarray(now["input"]).reshape(28, 28)
    rows = np.flatnonzero(image.max(axis=1) > 0.05)
    assert rows[-1] - rows[0] + 1 in (20, 21)
    np.testing.assert_allclose(ndimage.center_of_mass(image), [13.5, 13.5], atol=1.0)
    check_lit_as_active(page, 1)
    page.screenshot(path=str(SHOTS / "classic_drawn_1.png"))


def test_a_test_image_shows_the_models_own_answer_and_outputs(demo, page):
    with page.expect_response(lambda r: "/sample?kind=test" in r.url) as sample:
        now = settle(page, lambda: page.click("#test-image"))
    sent = sample.value.json()
    assert now["input"] == pytest.approx(sent["pixels"], abs=1e-4)  # the image, as it is
    page.get_by_text(f"test image {sent['index']}: labelled {sent['label']}").wait_for()
    check_against_the_model(page, demo, demo["runs"]["sigmoid"])


def test_noise_shows_its_top_output(demo, page):
    now = settle(page, lambda: page.click("#noise"))
    page.get_by_text("uniform noise").first.wait_for()
    assert max(now["input"]) > 0.9 and min(now["input"]) < 0.1  # noise, not a digit
    check_against_the_model(page, demo, demo["runs"]["sigmoid"])


def test_switching_runs_shows_what_the_other_network_does_with_the_same_image(demo, page):
    settle(page, lambda: page.click("#test-image"))
    before = shown(page)
    wide = demo["runs"]["relu"]
    after = settle(page, lambda: page.select_option("#run-select", wide))
    assert after["input"] == before["input"]  # the same picture…
    assert after["outputs"] != before["outputs"]  # …another network's answer to it
    check_against_the_model(page, demo, wide)
    assert "16/100" in page.locator("#network").text_content()  # the wide layer, summarised
    assert page.locator("#weights canvas").count() == 16
    check_lit_as_active(page, int(after["answer"]))
    page.screenshot(path=str(SHOTS / "wide_test_image.png"))


def _post(url, body: bytes):
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_input_gets_a_4xx_with_the_reason(demo):
    predict = f"{demo['url']}/api/runs/{demo['runs']['sigmoid']}/predict"
    for body, status, reason in (
        (b'{"pixels": [NaN' + b", 0.5" * 783 + b"]}", 400, "must be finite"),
        (json.dumps({"pixels": [0.5] * 100}).encode(), 400, "expected rows of 784"),
        (json.dumps({"pixels": [255.0] * 784}).encode(), 400, "divide 0..255 pixels by 255"),
        (json.dumps({"drawing": [[0.5] * 3000] * 3}).encode(), 400, "8 to 280 pixels"),
        (b"not json", 400, "send JSON"),
        (b'{"drawing": [[]]}', 400, "8 to 280 pixels on each side"),
        (b'{"drawing": [[0.5, 0.5], [0.5]]}', 400, "rows of equal length"),
        (json.dumps({"drawing": [["0.5"] * 10] * 10}).encode(), 400, "numbers in [0, 1]"),
        (b'{"pixels": []}', 400, "expected rows of 784"),
        (json.dumps({"pixels": [[0.5] * 784] * 2}).encode(), 400, "one image"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "send JSON"),
        (b"[" + b"0.5," * 1_000_000 + b"0]", 413, "at most"),
    ):
        got, answer = _post(predict, body)
        assert got == status and reason in answer["error"], (got, answer)
    got, answer = _post(f"{demo['url']}/api/runs/nosuchrun/predict", b'{"pixels": [0]}')
    assert got == 404 and "nosuchrun" in answer["error"]
