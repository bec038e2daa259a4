"""The registry: a trained model handed on (`make register RUN_ID=<id>`, a sweep's best).

Registers the run's logged model under one registered model name (register.model_name,
e.g. mnist-classifier) and points the alias `champion` at the new version, with its lineage
as version tags a reviewer sees in the UI: the run, its recipe and family, its config hash,
the digest of the data it trained on, its validation and test accuracy. A finished sweep
registers its best run this way; `make serve` serves whatever `champion` points at.
"""

from __future__ import annotations

import logging

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.errors import PipelineError
from pipeline.logs import redact

log = logging.getLogger(__name__)


def model_name_for(dataset: str) -> str:
    """The registered model of a dataset's classifiers: one per dataset (make serve MODEL=)."""
    return f"{dataset}-classifier"


def registered_dataset(client, model_name: str) -> str | None:
    """The dataset a registered model's versions were trained on (its `dataset` tag; for a
    model registered before the tag existed, the one its name says), None for a new model."""
    try:
        model = client.get_registered_model(model_name)
    except MlflowException:
        return None
    if model.tags.get("dataset"):
        return model.tags["dataset"]
    return model_name.removesuffix("-classifier") if model_name.endswith("-classifier") else None


def register(run_id: str, model_name: str | None = None, alias: str = "champion") -> str:
    """Register runs:/<run_id>/model as a new version of `model_name` (default: the run's
    dataset's, e.g. digits-classifier), set `alias` to it; return the version. A model
    serves one dataset: a run of another is refused, never registered beside it."""
    client = mlflow.MlflowClient()
    try:
        source = client.get_run(run_id)
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
            raise  # the store itself failed (a server down): the app says so
        raise PipelineError(
            f"register: no run {run_id} in {redact(mlflow.get_tracking_uri())}"
        ) from None
    tags = source.data.tags
    if tags.get("kind") != "training" or source.info.status != "FINISHED":
        raise PipelineError(
            f"register: run {run_id} is not a FINISHED training run "
            f"(kind={tags.get('kind')}, status {source.info.status})"
        )
    if "stopped" in tags:  # finished, but cut short on purpose: not a model to serve
        raise PipelineError(
            f"register: run {run_id} was {tags['stopped']} ({tags.get('stopped_reason', '')}); "
            "register a run that trained all its epochs"
        )
    try:
        model_id = mlflow.models.get_model_info(f"runs:/{run_id}/model").model_id
    except (MlflowException, OSError):
        raise PipelineError(
            f"register: run {run_id} logged no model "
            "(was it trained with tracking.log_model=false?)"
        ) from None
    dataset = source.data.params.get("data.name", "mnist")
    model_name = model_name or model_name_for(dataset)
    serves = registered_dataset(client, model_name) or (
        model_name.removesuffix("-classifier") if model_name.endswith("-classifier") else dataset
    )
    if serves != dataset:
        raise PipelineError(
            f"register: run {run_id} was trained on {dataset}, and {model_name} serves "
            f"{serves}: a model answers for the data it was trained on. Register it as "
            f"{model_name_for(dataset)}: make register RUN_ID={run_id} (no register.model_name)"
        )
    dataset_inputs = source.inputs.dataset_inputs if source.inputs else []
    inputs = {d.dataset.name: d.dataset.digest for d in dataset_inputs}
    metrics = source.data.metrics
    lineage = {
        "run_id": run_id,
        "run_name": source.info.run_name,
        "recipe": tags.get("model_name", ""),
        "model_family": tags.get("model_family", ""),
        "config_hash": tags.get("config_hash", ""),
        "git_commit": tags.get("git_commit", ""),
        "dataset": dataset,
        "train_data_digest": next((v for k, v in inputs.items() if k.endswith("-train")), ""),
        "val_split": validation_split(source),
        "val_accuracy": f"{metrics.get('val_accuracy', float('nan')):.4f}",
        "test_accuracy": f"{metrics.get('test_accuracy', float('nan')):.4f}",
    }
    pixels = {"mnist": "784 pixels (28×28)", "digits": "64 pixels (8×8)"}.get(dataset, "pixels")
    try:
        client.create_registered_model(
            model_name,
            tags={"dataset": dataset},
            description=f"Digit classifiers trained by this project on {dataset} ({pixels} in "
            "[0, 1] → the digit). The alias `champion` marks the one to serve: `make serve`.",
        )
    except MlflowException:
        client.set_registered_model_tag(model_name, "dataset", dataset)  # it exists already
    # From the logged model itself (MLflow 3 keeps it apart from the run's artifacts): what
    # mlflow.register_model resolves runs:/ to, without its three lines on the console.
    version = client.create_model_version(
        model_name,
        f"models:/{model_id}",
        run_id=run_id,
        tags=lineage,
        description=f"{source.info.run_name}: validation accuracy {lineage['val_accuracy']}, "
        f"test accuracy {lineage['test_accuracy']}; config.yaml in run {run_id}.",
        model_id=model_id,
    )
    client.set_registered_model_alias(model_name, alias, version.version)
    log.info(
        "register: %s version %s (run %s) is now @%s", model_name, version.version, run_id, alias
    )
    return version.version


def validation_split(run) -> str:
    """What a run's val_accuracy was measured on: its dataset, the validation split's
    digest and size (two runs' val_accuracy compare only if this is the same)."""
    params = run.data.params
    digest = next(
        (d.dataset.digest for d in run.inputs.dataset_inputs if d.dataset.name.endswith("-val")),
        "?",
    )
    return (
        f"{params.get('data.name', '?')} validation split {digest}: "
        f"{params.get('data.validation_size', '?')} images, split_seed "
        f"{params.get('data.split_seed', '?')}"
    )
