"""Stage `evaluate`: how each trained model does on the test set, digit by digit.

Loads each run's logged model back from MLflow (the same pyfunc a user would load),
predicts the 10k test digits and logs to that run: per-class precision, recall and F1
(scikit-learn's classification report), a confusion-matrix plot and a grid of
misclassified digits with their true and predicted labels. It logs through the client API,
never reopening the finished run, so a crash here cannot turn it RUNNING or FAILED.
"""

from __future__ import annotations

import logging

import matplotlib.pyplot as plt
import mlflow
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, classification_report

from pipeline.data import dataset
from pipeline.errors import PipelineError
from pipeline.tracking import plots, store

log = logging.getLogger(__name__)


def run(cfg, results: dict) -> list[str]:
    run_ids = list(cfg.evaluate.run_ids) or results.get("train")
    if not run_ids:
        raise PipelineError(
            "evaluate: no runs to evaluate: put `train` before `evaluate` in "
            "stages, or name runs with evaluate.run_ids=[<run id>,...]"
        )
    data = dataset.load(cfg.data)
    x, y = data.x("test"), data.y("test")
    store.setup(cfg)
    client = mlflow.MlflowClient()
    for run_id in run_ids:
        if cfg.tracking.skip_finished and client.get_run(run_id).data.tags.get("evaluated"):
            continue  # a resumed sweep: this run was evaluated when it was trained
        model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
        predicted = np.asarray(model.predict(x)).astype(np.int64)
        log_evaluation(client, run_id, y, predicted, x, cfg.evaluate.misclassified)
        client.set_tag(run_id, "evaluated", "true")  # last: a crash before it re-evaluates
    return run_ids


def log_evaluation(
    client, run_id: str, y: np.ndarray, predicted: np.ndarray, x: np.ndarray, n_wrong: int
) -> None:
    report = classification_report(y, predicted, output_dict=True, zero_division=0)
    client.log_dict(run_id, report, "evaluation/classification_report.json")
    client.log_text(
        run_id,
        classification_report(y, predicted, digits=4, zero_division=0),
        "evaluation/classification_report.txt",
    )
    client.log_metric(run_id, "test_macro_f1", report["macro avg"]["f1-score"])
    client.log_metric(run_id, "eval_accuracy", report["accuracy"])

    fig, ax = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay.from_predictions(y, predicted, ax=ax, colorbar=False)
    ax.set_title(f"Test set confusion matrix (accuracy {report['accuracy']:.4f})")
    client.log_figure(run_id, fig, "evaluation/confusion_matrix.png")
    plt.close(fig)

    wrong = np.flatnonzero(predicted != y)[:n_wrong]
    if len(wrong):
        fig = plots.digit_grid(x[wrong], [f"true {y[i]} → {predicted[i]}" for i in wrong])
        client.log_figure(run_id, fig, "evaluation/misclassified.png")
        plt.close(fig)
    log.info(
        "evaluate: %s: test accuracy %.4f, %d mistakes (confusion matrix and misclassified "
        "digits logged to the run)",
        client.get_run(run_id).info.run_name,
        report["accuracy"],
        int((predicted != y).sum()),
    )
