"""Stage `reproduce` (`make reproduce RUN_ID=<id>`): rerun a logged training run from its
logged config and say, metric by metric, whether the rerun matches it.

A seed fixes a run bit for bit on the same lock file and BLAS kernel. So when a metric
differs, the environments are compared too (the env.* tags: package versions, lock, BLAS
library and kernel, CPU, Python): a different kernel explains last-bit differences that
SGD grows into different accuracies; to reproduce such a run here, pin its kernel with
OPENBLAS_CORETYPE=<its env.blas_kernel>. The rerun is a run of its own (tag
kind=reproduction, reproduces=<id>) holding the comparison as reproduction.md.

Where and on what: the rerun is the original's logged config.yaml, logged to the
original's experiment, whatever the defaults say (a digits run reruns on the digits, into
`digits`, without `data=digits`). Only a setting typed on the command line changes that:
Hydra's task overrides (HydraConfig's overrides.task, what the user typed, never a default
or a preset's). `tracking.experiment=<name>` picks the experiment; `data=<another
dataset>` reruns the config on that dataset, into that dataset's experiment (unless
`tracking.experiment` is typed too); `data=` naming the run's own dataset changes nothing.
A typed setting of what a run computes (seed, model, train, the data split) is not
applied, and the output says so: a reproduction reruns what was run. Run in-process,
without Hydra's app (the compose API), nothing counts as typed.

A run whose config.yaml is gone (its artifacts deleted) cannot be rerun: one line names
the run, what is missing and where, and the fix (restore it from a backup).
"""

from __future__ import annotations

import logging
import math
import os

import mlflow
import pandas as pd
from hydra.core.hydra_config import HydraConfig
from mlflow.exceptions import MlflowException
from mlflow.utils.file_utils import local_file_uri_to_path

from pipeline import families
from pipeline.config import COMPUTED_KEYS
from pipeline.data import dataset, download
from pipeline.errors import PipelineError
from pipeline.families import training
from pipeline.logs import redact
from pipeline.tracking import identity, store

log = logging.getLogger(__name__)
TIMINGS = ("epoch_seconds", "train_seconds")  # wall-clock: never expected to match


def run(cfg, results: dict) -> pd.DataFrame:
    run_id = cfg.reproduce.run_id  # its form is checked with the config (config.RUN_ID)
    if not run_id:
        raise PipelineError(
            "reproduce.run_id is not set: make reproduce RUN_ID=<id> (a training "
            "run's id, as the MLflow UI shows it)"
        )
    # The store, not cfg's experiment: the rerun's is known once the run is read.
    uri = store.tracking_uri(cfg)
    if uri.startswith("sqlite:///"):
        store.initialise_sqlite(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        original = client.get_run(run_id)
    except MlflowException:
        raise PipelineError(
            f"reproduce: no run {run_id} in {redact(store.tracking_uri(cfg))}"
        ) from None
    family = original.data.tags.get("model_family")
    if family not in families.FAMILIES:
        raise PipelineError(
            f"reproduce: run {run_id} is not a training run (tag model_family "
            f"is {family!r}); name a run of ours or of the baseline"
        )
    run_cfg = rerun_config(cfg, client, original)
    download.fetch_all(run_cfg.data)
    dataset.prepare(run_cfg.data)
    rerun_id = training.train(families.get(family), run_cfg, dataset.load(run_cfg.data))
    rerun = client.get_run(rerun_id)

    table = metric_table(client, original, rerun)
    differing_env = {
        k: (original.data.tags.get(k, "(not recorded)"), v)
        for k, v in sorted(rerun.data.tags.items())
        if k.startswith("env.") and original.data.tags.get(k) != v
    }
    text = report(run_id, rerun_id, table, differing_env)
    print(text)
    client.log_text(rerun_id, text, "reproduction.md")  # the finished rerun is not reopened
    return table


def rerun_config(cfg, client, original):
    """The run's logged config, with this machine's data paths and no sweep bookkeeping,
    logging to the original's experiment; the dataset or experiment typed on the command
    line instead, if any (the module's docstring says which settings count)."""
    run_id = original.info.run_id
    run_cfg = logged_config(cfg, client, original)
    typed = typed_overrides()
    other_data = "data" in typed and cfg.data.name != run_cfg.data.name
    if other_data:
        run_cfg.data = cfg.data  # its paths interpolate this machine's, as cfg's do
    not_applied = [
        override
        for key, override in typed.items()
        if any(key == c or key.startswith(f"{c}.") for c in COMPUTED_KEYS)
        and not (other_data and key.startswith("data."))
    ]
    if not_applied:
        log.warning(
            "reproduce: %s not applied: a reproduction reruns the logged config (only "
            "data=<another dataset> and tracking.experiment=<name> change it)",
            " ".join(not_applied),
        )
    if "tracking.experiment" in typed or other_data:
        experiment = cfg.tracking.experiment
    else:
        experiment = original_experiment(client, original)
    run_cfg.tracking.parent_run_id = None
    run_cfg.tracking.skip_finished = False
    run_cfg.tracking.experiment = experiment
    run_cfg.tracking.tags = {"kind": "reproduction", "reproduces": run_id}
    return run_cfg


def typed_overrides() -> dict[str, str]:
    """key -> override for each setting typed on the command line (Hydra's task overrides:
    `key=value`, `+key=value`, `++key=value`, `~key`); empty without Hydra's app."""
    if not HydraConfig.initialized():
        return {}
    return {str(o).partition("=")[0].lstrip("+~"): str(o) for o in HydraConfig.get().overrides.task}


def original_experiment(client, original) -> str:
    """The name of the experiment the original run is in; PipelineError if it is deleted."""
    experiment = client.get_experiment(original.info.experiment_id)
    if experiment.lifecycle_stage == "deleted":
        raise PipelineError(
            f"reproduce: run {original.info.run_id}'s experiment {experiment.name} is "
            f"deleted: restore it (MLFLOW_TRACKING_URI={redact(mlflow.get_tracking_uri())} "
            f"mlflow experiments restore --experiment-id {experiment.experiment_id}) or "
            "rerun into another: tracking.experiment=<name>"
        )
    return experiment.name


def logged_config(cfg, client, original):
    """The run's logged config (identity.logged_config); PipelineError naming the run, what
    is gone and where if its config.yaml is not in its artifacts."""
    run_id = original.info.run_id
    try:
        return identity.logged_config(cfg, run_id)
    except MlflowException:
        # A store that cannot be read (a server down) fails here again, as MLflow words it.
        if any(f.path == "config.yaml" for f in client.list_artifacts(run_id)):
            raise
    where = original.info.artifact_uri
    if where.startswith("file:"):
        folder = local_file_uri_to_path(where)
        if os.path.isdir(folder):
            gone, restore = f"{os.path.join(folder, 'config.yaml')} is gone", "that file"
        else:
            gone, restore = f"its artifact folder {folder} is gone", "that folder"
    else:
        gone, restore = f"{where} holds no config.yaml", "it"
    raise PipelineError(
        f"reproduce: run {run_id} cannot be rerun: its config.yaml, what a rerun is made "
        f"from, is missing ({gone}). Restore {restore} from a backup of the store, or "
        "reproduce another run: make reproduce RUN_ID=<id>"
    )


def metric_table(client, original, rerun) -> pd.DataFrame:
    """One row per metric the original logged: its value, the rerun's, and the verdict."""
    rows = []
    for key in sorted(original.data.metrics):
        ours = original.data.metrics[key]
        theirs = rerun.data.metrics.get(key)
        if theirs is None:
            verdict = "not rerun (logged by a later stage)"
        elif key in TIMINGS:
            verdict = "timing: not compared"
        else:
            history = [m.value for m in client.get_metric_history(original.info.run_id, key)]
            rerun_history = [m.value for m in client.get_metric_history(rerun.info.run_id, key)]
            if history == rerun_history:
                verdict = "identical" + (
                    f" (all {len(history)} epochs)" if len(history) > 1 else ""
                )
            else:
                epoch = next(
                    (
                        i + 1
                        for i, (a, b) in enumerate(zip(history, rerun_history))
                        if not _same(a, b)
                    ),
                    min(len(history), len(rerun_history)) + 1,
                )
                verdict = (
                    f"DIFFERS from epoch {epoch}, " if len(history) > 1 else "DIFFERS, "
                ) + f"final by {theirs - ours:+.3g}"
        rows.append({"metric": key, "original": ours, "rerun": theirs, "verdict": verdict})
    return pd.DataFrame(rows)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def report(run_id: str, rerun_id: str, table: pd.DataFrame, differing_env: dict) -> str:
    compared = table[~table.verdict.str.startswith(("timing", "not rerun"))]
    differs = compared[compared.verdict.str.startswith("DIFFERS")]
    lines = [
        f"# Reproduction of run {run_id}",
        "",
        f"Rerun: {rerun_id}",
        "",
        table.to_markdown(index=False, floatfmt=".6g"),
        "",
    ]
    if differs.empty:
        lines.append(f"Reproduced: all {len(compared)} compared metrics are identical.")
    else:
        lines.append(f"NOT reproduced: {len(differs)} of {len(compared)} compared metrics differ.")
    if differing_env:
        lines += [
            "",
            "What differs between the two environments:",
            "",
            pd.DataFrame(
                [{"tag": k, "original": a, "rerun": b} for k, (a, b) in differing_env.items()]
            ).to_markdown(index=False),
        ]
        kernel = differing_env.get("env.blas_kernel")
        if kernel:
            lines += [
                "",
                f"To rerun on the original's BLAS kernel: OPENBLAS_CORETYPE={kernel[0]} "
                f"make reproduce RUN_ID={run_id}",
            ]
    else:
        lines += ["", "The environments match (versions, lock, BLAS kernel, CPU, Python)."]
    return "\n".join(lines)
