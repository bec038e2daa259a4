"""`make demo` opening a run: once, whatever the rush, with nothing left behind.

A real demo server (`python -m pipeline.serve.demo`) on real trained runs, its TMPDIR a
folder of the test's: 200 simultaneous first requests for a run load its model and its test
images once (one "opened run" line), leave no temporary folder behind, and on the real
MNIST peak at no more memory than twice a server that opened the run for one page. A
run that logged no model is refused at the start, in one line, exit 2.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from helpers import WAIT, free_port, run_app, wait_for

pytestmark = pytest.mark.slow
RUSH = 200  # simultaneous first requests for one run

# No proxy from the environment between the test and the loopback server.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _train(data_dir: Path, *overrides: str, stages: str = "train") -> str:
    """Train one run of ours (one epoch, no baseline) into the test's store; its id."""
    uri = os.environ["MLFLOW_TRACKING_URI"]  # the test's store (conftest), as the app sees it
    before = {r.info.run_id for r in _runs(uri)}
    done = run_app(
        f"paths.data_dir={data_dir}",
        f"stages=[{stages}]",
        "baseline=none",
        "train.epochs=1",
        *overrides,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (new,) = {r.info.run_id for r in _runs(uri)} - before
    return new


def _runs(uri: str):
    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.kind = 'training'") if experiments else []


class Demo:
    """`make demo` on one run, in the background: its log, its TMPDIR, its page server."""

    def __init__(self, tmp: Path, run_id: str):
        self.tmp = tmp / "server-tmp"
        self.tmp.mkdir(parents=True)
        self.log = tmp / "demo.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = run_app(
            "--port",
            self.port,
            module="pipeline.serve.demo",
            env={"RUN_ID": run_id, "TMPDIR": str(self.tmp)},
            popen=True,
            log=self.log,
        )

    def __enter__(self) -> Demo:
        try:
            wait_for("make demo's link", self.ready, self.process, log=self.log)
        except BaseException:
            self.stop()
            raise
        (app,) = (
            Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        )
        self.app_pid = int(app)  # the page's server, demo.py's one child
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def ready(self) -> bool:
        return "demo: http" in self.log.read_text()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)

    def memory(self, field: str) -> int:
        """A /proc/<pid>/status memory line of the page's server, in kB (VmHWM: its peak)."""
        status = Path(f"/proc/{self.app_pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith(f"{field}:")]
        return int(line.split()[1])

    def left_in_tmp(self) -> list[str]:
        return sorted(p.name for p in self.tmp.iterdir())


def _ask(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with _DIRECT.open(request, timeout=WAIT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _first_requests(demo: Demo, run_id: str, width: int, n: int) -> list[tuple[int, dict]]:
    """n requests for run_id at once, as n pages opening it do: its description, a test
    image, its first layer's weights, an answer to an image; their (status, answer)."""
    base = f"{demo.url}/api/runs/{run_id}"
    asks = [
        (base, None),
        (f"{base}/sample?kind=test", None),
        (f"{base}/weights", None),
        (f"{base}/predict", {"pixels": [0.5] * width}),
    ]
    together = threading.Barrier(n)

    def ask(i: int):
        together.wait(timeout=WAIT)
        return _ask(*asks[i % len(asks)])

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(ask, range(n)))


def _opened(demo: Demo, run_id: str) -> int:
    """How many times the server said it opened run_id (downloaded its model and config)."""
    return demo.log.read_text().count(f"opened run {run_id}")


def _test_images_loaded(demo: Demo, data: str) -> int:
    """How many times the server said it loaded (and verified) the test images of data."""
    return demo.log.read_text().count(f"loaded the test images of data={data}")


def test_a_rush_of_first_requests_opens_the_run_once_and_leaves_no_temp_folders(
    tmp_path, digits_prepared
):
    run_id = _train(digits_prepared, "data=digits")
    with Demo(tmp_path, run_id) as demo:
        answers = _first_requests(demo, run_id, 64, RUSH)
        assert [s for s, _ in answers] == [200] * RUSH, [a for a in answers if a[0] != 200][:3]
        assert {a["prediction"] for _, a in answers if "prediction" in a}  # answered
        left = demo.left_in_tmp()
        assert left == [], f"{len(left)} temporary folders left: {left[:5]}"
        assert _opened(demo, run_id) == 1, demo.log.read_text()[-3000:]
        assert _test_images_loaded(demo, "digits") == 1, demo.log.read_text()[-3000:]
        # Opened: what it keeps is used, nothing is loaded again.
        assert _ask(f"{demo.url}/api/runs/{run_id}/sample?kind=test&index=3")[0] == 200
        assert _opened(demo, run_id) == 1 and _test_images_loaded(demo, "digits") == 1
        assert demo.left_in_tmp() == []


def test_a_rush_of_first_requests_on_mnist_peaks_below_twice_one_opening(
    tmp_path, real_mnist_mirror
):
    data = tmp_path / "data"
    run_id = _train(data, f"data.mirrors=[{real_mnist_mirror}]", stages="download,preprocess,train")
    with Demo(tmp_path / "one", run_id) as demo:
        # its description and a test image: the model and the test images loaded
        assert [s for s, _ in _first_requests(demo, run_id, 784, 2)] == [200, 200]
        one_open = demo.memory("VmHWM")
    with Demo(tmp_path / "rush", run_id) as demo:
        answers = _first_requests(demo, run_id, 784, RUSH)
        assert [s for s, _ in answers] == [200] * RUSH, [a for a in answers if a[0] != 200][:3]
        rush = demo.memory("VmHWM")
        left = demo.left_in_tmp()
    assert rush <= 2 * one_open, f"peak {rush / 1e6:.2f} GB; opened once {one_open / 1e6:.2f} GB"
    assert left == []


def test_a_run_without_a_model_is_refused_at_the_start_in_one_line(tmp_path, digits_prepared):
    run_id = _train(digits_prepared, "data=digits", "tracking.log_model=false")
    done = run_app(
        "--port", free_port(), module="pipeline.serve.demo", env={"RUN_ID": run_id}, timeout=120
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert run_id in line and "tracking.log_model=true" in line and "RUN_ID=" in line, line
