"""End to end: a tiny sweep, then `python -m pipeline.ui`, then a real headless Chromium.

Checks what a person reviewing a sweep sees: the experiment page lists the parent and its
child runs, a child's page shows its params and test_accuracy, the compare view of two
runs loads, and the parent's summary plots are listed among its artifacts. Screenshots go
to test-artifacts/e2e/. Needs Debian's chromium (apt-get install chromium chromium-driver);
without it the test skips, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.paths import PROJECT_ROOT

pytestmark = pytest.mark.e2e
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
SHOTS = PROJECT_ROOT / "test-artifacts" / "e2e"


def _browser_or_skip():
    missing = []
    if not Path(CHROMIUM).exists():
        missing.append("chromium (apt-get install chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install playwright; never `playwright install`)")
    if missing:
        message = "e2e needs " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {seconds} s")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """A finished smoke sweep in a fresh store, and the UI serving it on a free port."""
    _browser_or_skip()
    tmp = tmp_path_factory.mktemp("e2e")
    mlruns = tmp / "mlruns"
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PIPELINE_DATA_MIRROR")}
    sweep = subprocess.run(
        [sys.executable, "-m", "pipeline", "sweep=smoke", f"paths.mlruns_dir={mlruns}",
         f"paths.data_dir={tmp / 'data'}", f"hydra.sweep.dir={tmp / 'multirun'}"],
        cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "pipeline.ui", "--port", str(port),
                               "--mlruns", str(mlruns)], cwd=PROJECT_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for(f"{url}/health")
        client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("sweep-smoke")
        runs = client.search_runs([experiment.experiment_id])
        yield url, experiment.experiment_id, runs, port, mlruns
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def _runs_by_kind(runs):
    parent = next(r for r in runs if r.data.tags.get("kind") == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_server_binds_to_loopback_and_refuses_a_taken_port(ui):
    _, _, _, port, mlruns = ui
    result = subprocess.run([sys.executable, "-m", "pipeline.ui", "--port", str(port),
                             "--mlruns", str(mlruns)], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_experiment_page_lists_the_parent_and_its_children(ui, page):
    url, experiment_id, runs, _, _ = ui
    parent, children = _runs_by_kind(runs)
    assert len(children) == 4
    page.goto(f"{url}/#/experiments/{experiment_id}/runs")
    page.get_by_text(parent.info.run_name).first.wait_for()
    # Child runs are nested under the parent, collapsed: expand it with the row's toggle.
    row = page.locator("[role=row]", has_text=parent.info.run_name).first
    row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    page.get_by_text(children[0].info.run_name).first.wait_for()
    page.screenshot(path=str(SHOTS / "experiment_runs.png"), full_page=True)
    for child in children:
        assert page.get_by_text(child.info.run_name).count() >= 1


def test_a_child_run_page_shows_its_params_and_test_accuracy(ui, page):
    url, experiment_id, runs, _, _ = ui
    _, children = _runs_by_kind(runs)
    child = next(c for c in children if c.data.tags["model_family"] == "numpy_mlp")
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{child.info.run_id}")
    page.get_by_text("test_accuracy").first.wait_for()
    page.get_by_text("model.hidden_sizes").first.wait_for()
    value = f"{child.data.metrics['test_accuracy']:.4g}"[:5]
    page.get_by_text(value).first.wait_for()
    page.screenshot(path=str(SHOTS / "child_run.png"), full_page=True)


def test_the_compare_view_of_two_runs_loads(ui, page):
    url, experiment_id, runs, _, _ = ui
    _, children = _runs_by_kind(runs)
    ours = [c for c in children if c.data.tags["model_family"] == "numpy_mlp"]
    ids = json.dumps([c.info.run_id for c in ours])
    page.goto(f"{url}/#/compare-runs?runs={ids}&experiments={json.dumps([experiment_id])}")
    page.get_by_text("model.hidden_sizes").first.wait_for()
    page.get_by_text("test_accuracy").first.wait_for()
    for run in ours:
        page.get_by_text(run.info.run_name).first.wait_for()
    page.screenshot(path=str(SHOTS / "compare_runs.png"), full_page=True)


def test_the_parent_run_lists_its_summary_plots(ui, page):
    url, experiment_id, runs, _, _ = ui
    parent, _ = _runs_by_kind(runs)
    page.goto(f"{url}/#/experiments/{experiment_id}/runs/{parent.info.run_id}/artifacts")
    page.get_by_text("summary").first.click()
    page.get_by_text("test_accuracy_vs_hidden_sizes.png").first.wait_for()
    page.get_by_text("test_accuracy_vs_hidden_sizes.png").first.click()
    page.locator("img").first.wait_for()
    page.screenshot(path=str(SHOTS / "parent_artifacts.png"), full_page=True)
    assert page.get_by_text("results.csv").count() >= 1
