"""The analyze stage on the 8×8 digits: every figure read back, every number in range."""

import matplotlib.image
import mlflow
import numpy as np
import pandas as pd
import pytest
from helpers import SMALL_ANALYSIS
from mlflow.tracking import MlflowClient

from pipeline.app import run_stages
from pipeline.data import dataset
from pipeline.errors import PipelineError
from pipeline.stages import analyze

FIGURES = [
    "first_layer_weights.png",
    "noise_confidence.png",
    "random_labels.png",
    "learning_rates.png",
    "seeds.png",
    "gradient_magnitudes.png",
    "accuracy_by_size.png",
]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysed")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    from hydra import compose, initialize_config_dir

    from pipeline.paths import PROJECT_ROOT

    overrides = [
        "data=digits",
        "baseline=none",
        "train.epochs=10",
        f"paths.data_dir={tmp / 'data'}",
        *SMALL_ANALYSIS,
    ]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        train_cfg = compose("config", overrides=overrides)
        analyze_cfg = compose("config", overrides=[*overrides, "stages=[analyze]"])
        wider_cfg = compose(
            "config", overrides=[*overrides, "model.name=wider", "model.hidden_sizes=[32]"]
        )
    wider = run_stages(wider_cfg)["train"][0]
    trained = run_stages(train_cfg)["train"][0]
    analysis = run_stages(analyze_cfg)["analyze"]
    yield trained, analysis, tmp, wider
    mp.undo()


def test_analysis_run_links_back_and_logs_the_report(analysed):
    trained, analysis, _, _ = analysed
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
    _, analysis, _, _ = analysed
    path = mlflow.artifacts.download_artifacts(
        f"runs:/{analysis}/report/{figure}", dst_path=str(tmp_path)
    )
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image[..., :3].std() > 0.01  # not a blank canvas


def test_numbers_are_in_range_and_tell_the_classic_story(analysed):
    _, analysis, _, _ = analysed
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
    history = MlflowClient().get_metric_history(analysis, "wide_shuffled_labels_train_accuracy")
    assert len(history) == 40 and history[-1].value > history[0].value


def test_accuracy_by_size_has_one_row_per_recipe_with_its_runs_and_parameters(analysed, tmp_path):
    trained, analysis, _, wider = analysed
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
