"""The analyze stage on the 8×8 digits: every figure read back, every number in range, a
line per part as it is done, the same numbers from one process as from two."""

import html
import logging
import re
from typing import NamedTuple

import joblib
import matplotlib.image
import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import SMALL_ANALYSIS
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from pipeline.app import run_stages
from pipeline.data import dataset
from pipeline.engine import Network
from pipeline.errors import PipelineError
from pipeline.paths import PROJECT_ROOT
from pipeline.stages import analyze
from pipeline.tracking import identity

FIGURES = [
    "first_layer_weights.png",
    "noise_confidence.png",
    "random_labels.png",
    "learning_rates.png",
    "seeds.png",
    "gradient_magnitudes.png",
    "accuracy_by_size.png",
]


PARTS = ["noise test", "gradient magnitudes", "learning rates", "random labels", "seeds"]


class Analysed(NamedTuple):
    trained: str  # the classic run analysed
    analysis: str  # the analysis run, computed by 2 worker processes
    tmp: object
    wider: str  # a second recipe, for accuracy against size
    overrides: list[str]  # the analysis's config: the one of `trained`
    lines: list[str]  # what the analysis logged


class _Lines(logging.Handler):
    """The messages the analyze stage logs while it is in use (`with _Lines() as lines`)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.logger = logging.getLogger(analyze.__name__)

    def emit(self, record):
        self.lines.append(record.getMessage())

    def __enter__(self) -> list[str]:
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self.lines

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level)


def _compose(overrides):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysed")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    overrides = [
        "data=digits",
        "baseline=none",
        "train.epochs=10",
        f"paths.data_dir={tmp / 'data'}",
        *SMALL_ANALYSIS,
    ]
    wider = run_stages(_compose([*overrides, "model.name=wider", "model.hidden_sizes=[32]"]))[
        "train"
    ][0]
    trained = run_stages(_compose(overrides))["train"][0]
    with _Lines() as lines:
        analysis = run_stages(_compose([*overrides, "stages=[analyze]", "analyze.workers=2"]))[
            "analyze"
        ]
    yield Analysed(trained, analysis, tmp, wider, overrides, lines)
    mp.undo()


def test_analysis_run_links_back_and_logs_the_report(analysed):
    trained, analysis = analysed.trained, analysed.analysis
    run = mlflow.get_run(analysis)
    assert run.data.tags["analyzed_run_id"] == trained and run.data.tags["kind"] == "analysis"
    files = {a.path for a in MlflowClient().list_artifacts(analysis, "report")}
    assert files == {
        f"report/{f}" for f in ["analysis.md", "analysis.html", *FIGURES, "accuracy_by_size.csv"]
    }
    page = mlflow.artifacts.load_text(f"runs:/{analysis}/report/analysis.html")
    assert page.count("data:image/png;base64,") == len(FIGURES)  # renders in the UI
    params = run.data.params
    assert params["analyzed_run_id"] == trained and params["analyzed_recipe"] == "classic"
    assert (
        float(params["analyzed_test_accuracy"])
        == mlflow.get_run(trained).data.metrics["test_accuracy"]
    )
    assert f"runs/{trained})" in run.data.tags["mlflow.note.content"]  # a link to it
    report = mlflow.artifacts.load_text(f"runs:/{analysis}/report/analysis.md")
    assert trained in report
    for figure in FIGURES:
        assert f"]({figure})" in report


@pytest.mark.parametrize("figure", FIGURES)
def test_every_figure_is_a_real_image(analysed, figure, tmp_path):
    analysis = analysed.analysis
    path = mlflow.artifacts.download_artifacts(
        f"runs:/{analysis}/report/{figure}", dst_path=str(tmp_path)
    )
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_numbers_are_in_range_and_tell_the_classic_story(analysed):
    analysis = analysed.analysis
    m = mlflow.get_run(analysis).data.metrics
    for key in (
        "noise_confident_fraction",
        "inverted_confident_fraction",
        "digits_confident_fraction",
        "shuffled_test_accuracy",
        "wide_shuffled_train_accuracy",
    ):
        assert 0.0 <= m[key] <= 1.0, key
    assert m["digits_confident_fraction"] > m["noise_confident_fraction"]
    # random labels: the wide network memorises them, but nothing generalises
    assert m["wide_shuffled_train_accuracy"] > 0.9
    assert m["shuffled_test_accuracy"] < 0.25 and m["wide_shuffled_test_accuracy"] < 0.25
    assert m["true_label_train_accuracy"] > m["shuffled_train_accuracy"]
    assert (
        m["seed_test_accuracy_min"] <= m["seed_test_accuracy_mean"] <= m["seed_test_accuracy_max"]
    )
    assert m["seed_test_accuracy_std"] > 0  # different seeds, different minima
    assert all(m[f"grad_mean_abs_layer{l}"] > 0 for l in (1, 2, 3))
    history = sorted(
        MlflowClient().get_metric_history(analysis, "wide_shuffled_labels_train_accuracy"),
        key=lambda m: m.step,  # logged in one batch: one timestamp
    )
    assert len(history) == 40 and history[-1].value > history[0].value


def test_accuracy_by_size_has_one_row_per_recipe_with_its_runs_and_parameters(analysed, tmp_path):
    trained, analysis, wider = analysed.trained, analysed.analysis, analysed.wider
    path = mlflow.artifacts.download_artifacts(
        f"runs:/{analysis}/report/accuracy_by_size.csv", dst_path=str(tmp_path)
    )
    table = pd.read_csv(path).set_index("recipe")
    # 8×8 digits: 64-16-16-10 has 64·16+16 + 16·16+16 + 16·10+10 = 1,482; 64-32-10 has 2,410.
    assert table.n_params.to_dict() == {"classic": 1482, "wider": 2410}
    for recipe, run in (("classic", trained), ("wider", wider)):
        assert table.loc[recipe, "runs"] == 1
        assert table.loc[recipe, "test_accuracy_mean"] == pytest.approx(
            mlflow.get_run(run).data.metrics["test_accuracy"]
        )
    page = mlflow.artifacts.load_text(f"runs:/{analysis}/report/analysis.html")
    assert "<td>wider</td>" in page and "<th>n_params</th>" in page


def test_the_report_is_titled_with_the_run_name_and_its_id_below(analysed):
    name = mlflow.get_run(analysed.trained).info.run_name
    assert name.startswith("ours classic 16-16 sigmoid")
    report = mlflow.artifacts.load_text(f"runs:/{analysed.analysis}/report/analysis.md")
    title, _, subtitle = report.splitlines()[:3]
    assert title == f"# Analysis of {name}"
    assert subtitle.startswith(f"Run `{analysed.trained}`")
    page = mlflow.artifacts.load_text(f"runs:/{analysed.analysis}/report/analysis.html")
    assert f"<title>Analysis of {html.escape(name)}</title>" in page
    assert f"<h1>Analysis of {html.escape(name)}</h1>" in page


def test_a_spread_over_one_run_shows_a_dash_never_nan(analysed):
    page = mlflow.artifacts.load_text(f"runs:/{analysed.analysis}/report/analysis.html")
    text = re.sub(r"data:image/png;base64,[^\"']*", "", page)  # base64 may spell "nan"
    assert not re.search(r"\bnan\b", text, re.IGNORECASE)
    assert text.count("<td>—</td>") == 2  # classic and wider: one run each


def test_a_line_says_when_each_part_is_done(analysed):
    first, *rest = analysed.lines
    assert re.fullmatch(
        rf"analyze: ours classic .* \(run {analysed.trained}\): 5 parts, \d+ jobs, "
        "on 2 worker processes",
        first,
    )
    done = [line for line in rest if " done: " in line]
    assert len(done) == len(PARTS)
    pattern = r"analyze: (\d)/5 (.+) done: \d+ jobs? in \d+\.\d s.* \(\d+ s since the start\)"
    matches = [m for line in done if (m := re.fullmatch(pattern, line))]
    assert len(matches) == len(done), done
    assert [int(m[1]) for m in matches] == [1, 2, 3, 4, 5]
    assert sorted(m[2] for m in matches) == sorted(PARTS)
    assert rest[-1].startswith("analyze: ") and "what it learned" in rest[-1]  # then the findings


def test_one_process_gives_the_same_numbers_as_two_bit_for_bit(analysed, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{analysed.tmp / 'mlflow.db'}")
    with _Lines() as lines:
        sequential = run_stages(
            _compose([*analysed.overrides, "stages=[analyze]", "analyze.workers=1"])
        )["analyze"]
    assert lines[0].endswith("one after another")  # in this process
    assert analysed.lines[0].endswith("on 2 worker processes")
    client = MlflowClient()
    one, two = (client.get_run(r).data.metrics for r in (sequential, analysed.analysis))
    assert sorted(one) == sorted(two) and len(one) > 20
    np.testing.assert_array_equal([one[k] for k in sorted(one)], [two[k] for k in sorted(one)])
    for key in one:  # the curves too, epoch by epoch
        ones, twos = (
            [m.value for m in sorted(client.get_metric_history(r, key), key=lambda m: m.step)]
            for r in (sequential, analysed.analysis)
        )
        np.testing.assert_array_equal(ones, twos, err_msg=key)
    reports = [
        mlflow.artifacts.load_text(f"runs:/{r}/report/analysis.md")
        for r in (sequential, analysed.analysis)
    ]
    assert reports[0] == reports[1]


def test_each_job_is_seeded_on_its_own_so_order_and_process_do_not_matter(analysed, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{analysed.tmp / 'mlflow.db'}")
    cfg = _compose([*analysed.overrides, "stages=[analyze]"])
    run_cfg = identity.logged_config(cfg, analysed.trained)
    net = Network.load(
        mlflow.artifacts.download_artifacts(f"runs:/{analysed.trained}/model/artifacts/network.npz")
    )
    parts = analyze.plan(cfg, run_cfg, net)
    assert [len(jobs) for jobs in parts.values()] == [1, 1, 5, 4, 3]
    reversed_parts = {part: jobs[::-1] for part, jobs in reversed(parts.items())}
    forwards, backwards = analyze.compute(parts, 1), analyze.compute(reversed_parts, 2)
    for part, results in forwards.items():
        assert results.keys() == backwards[part].keys()
        for key, result in results.items():
            np.testing.assert_equal(result, backwards[part][key], err_msg=f"{part} {key}")


def test_worker_count_is_one_per_core_at_most_one_per_job():
    assert analyze.worker_count(None, 100) == joblib.cpu_count()
    assert analyze.worker_count(None, 1) == analyze.worker_count(4, 1) == 1
    assert analyze.worker_count(1, 100) == 1
    with pytest.raises(PipelineError, match="analyze.workers=0"):
        analyze.worker_count(0, 5)


def test_weight_images_colour_positive_green_and_negative_red():
    w = np.array([[[2.0, -1.0], [0.0, -2.0]]])
    rgb = analyze.weight_images(w)
    assert rgb.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0, 0], [0, 1, 0])
    np.testing.assert_allclose(rgb[0, 0, 1], [0.5, 0, 0])
    np.testing.assert_allclose(rgb[0, 1, 0], [0, 0, 0])
    np.testing.assert_allclose(rgb[0, 1, 1], [1, 0, 0])


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_shuffle_labels_permutes_a_fraction_and_keeps_the_label_counts(fraction):
    y = np.repeat(np.arange(10), 100)
    shuffled = dataset.shuffle_labels(y, fraction, np.random.default_rng(0))
    assert np.bincount(shuffled).tolist() == np.bincount(y).tolist()
    changed = np.mean(shuffled != y)
    assert changed <= fraction + 1e-9 and changed >= 0.8 * fraction * 0.9


def test_label_shuffle_applies_to_training_labels_only(make_cfg):
    plain, noisy = make_cfg("data=digits"), make_cfg("data=digits", "data.label_shuffle=1.0")
    for cfg in (plain, noisy):
        dataset.prepare(cfg.data)
    a, b = dataset.load(plain.data), dataset.load(noisy.data)
    np.testing.assert_array_equal(a.x("train"), b.x("train"))
    assert np.mean(a.y("train") != b.y("train")) > 0.8
    for split in ("val", "test"):
        np.testing.assert_array_equal(a.y(split), b.y(split))


def test_analyze_without_a_run_says_what_to_do(make_cfg):
    with pytest.raises(PipelineError, match="run `make run` first"):
        run_stages(make_cfg("data=digits", "stages=[analyze]"))
