"""The Hydra app: compose conf/config.yaml, validate it, run each stage in `stages` in order.

The stages are pipeline/stages/ (imported when they run); each is `run(cfg, results) ->
output`, where `results` maps the stages run so far in this invocation to their outputs.

Exit codes: 0 done; 1 runs FAILED (recorded in MLflow with their reasons); 2 a user's
mistake (a bad override, an unreachable store), one line, nothing written, or a full disk
(one line naming the folder and the setting that moves it; the run it hit ended FAILED
where the store could still record it); 128 + the
signal's number when stopped (130 Ctrl-C, 143 SIGTERM), the runs ended KILLED.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline import config, interrupts, logs, progress
from pipeline.errors import RunFailed, disk_full, disk_full_message, user_error
from pipeline.paths import PROJECT_ROOT, from_root
from pipeline.stages import STAGES, module

DATA_STAGES = {"download", "preprocess"}  # the stages that open no store

log = logging.getLogger("pipeline")

# MLFLOW_TRACKING_URI as the user gave it (MLflow's set_tracking_uri sets it for the
# processes it starts): whether a full store is moved by it or by paths.mlruns_dir.
_given_tracking_uri: list[str | None] = []


def run_stages(cfg: DictConfig, summary: bool = False) -> dict:
    """Validate the config, then run the configured stages in order; return their outputs.

    Runs that fail (results["failures"]) do not stop the later stages, which work on the
    runs that finished; RunFailed names them at the end. With `summary`, the runs trained
    are summed up last (families, val and test accuracy, ids, where to open them).
    """
    config.validate(cfg, STAGES)
    if (uri := os.environ.get("MLFLOW_TRACKING_URI")) and set(cfg.stages) - DATA_STAGES:
        # A mistaken tracking URI is named before any stage works (make data needs none).
        from pipeline.tracking import urls

        urls.check_tracking_uri_once(uri)
    results: dict = {}
    for stage in cfg.stages:
        log.info("stage %s", stage)
        started = time.perf_counter()
        stage_module = importlib.import_module(module(stage))
        # the handlers and levels its libraries set on import (Optuna's INFO, MLflow's own
        # handler, which is to redact and to leave a full disk to us as well)
        logs.quiet_libraries(cfg.verbose)
        logs.redact_all_handlers()
        progress.logs_above_bars()
        results[stage] = stage_module.run(cfg, results)
        log.info("stage %s done in %.2f s", stage, time.perf_counter() - started)
    if summary and results.get("train"):
        from pipeline.tracking import runs

        print(runs.summary(cfg, results["train"]), flush=True)
    if results.get("failures"):
        raise RunFailed(
            f"{len(results['failures'])} run(s) FAILED: " + "; ".join(results["failures"])
        )
    return results


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="config")
def main(cfg: DictConfig) -> None:
    # A stop signal ends the runs KILLED; processes this one started (search workers)
    # are stopped first, so that they close theirs.
    interrupts.install(before_raising=interrupts.stop_descendants)
    _given_tracking_uri[:] = [os.environ.get("MLFLOW_TRACKING_URI")]
    logs.redact_all_handlers()
    logs.guard_file_handlers()  # a log file on a full disk: one line at the end, exit 2
    logs.quiet_libraries(cfg.verbose)
    progress.logs_above_bars()  # Hydra made this job's handlers: its lines above any bar
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        try:
            run_stages(cfg, summary=True)
            if logs.UNWRITTEN_LOGS:  # the work is done; its log file is cut short
                raise logs.UNWRITTEN_LOGS[0][1]
        except KeyboardInterrupt as e:  # interrupts.Interrupted too
            stopped(e)
        except RunFailed as e:  # recorded in MLflow with the reasons; a script must notice
            log.error("%s", e)
            sys.exit(1)
        except Exception as e:
            mistake = user_error(e, *written_to(cfg))
            if mistake is None:
                raise
            log.error("%s", mistake)  # a user mistake: one message, no traceback
            sys.exit(2)
        return
    # A sweep job: its runs are children of the sweep's parent run, and a failure is
    # recorded (the run ends FAILED) without stopping the other jobs.
    from pipeline.stages import sweep
    from pipeline.tracking import identity

    cfg.tracking.parent_run_id = sweep.parent_run_id(hydra_cfg.sweep.dir)
    cfg.tracking.skip_finished = True
    cfg.tracking.varied = sweep.varied(hydra_cfg.overrides.task, sweep.swept_keys(hydra_cfg))
    cfg.quiet = True  # jobs run side by side: the launcher draws the sweep's one bar
    result: dict[str, Any] = {
        "config_hash": identity.config_hash(cfg),
        "overrides": list(hydra_cfg.overrides.task),
    }
    try:
        run_ids = run_stages(cfg).get("train", [])
        result.update(status="ok", runs=run_ids, best=sweep.best_run(run_ids))
    except KeyboardInterrupt as e:  # interrupts.Interrupted too
        # Its run is KILLED; this worker process ends too, so that it takes no next job
        # (the launcher, stopped by the same signal, is waiting for it to end).
        result.update(status="interrupted", error=interrupts.reason(e))
        sweep.write_job_result(hydra_cfg.runtime.output_dir, result)
        log.error("job %s", interrupts.reason(e))
        logging.shutdown()
        os._exit(interrupts.exit_code(e))
    except Exception as e:  # noqa: BLE001 — any failure of one job must not end the sweep
        log.error("job failed: %s: %s", type(e).__name__, e)
        result.update(status="failed", error=f"{type(e).__name__}: {e}")
    sweep.write_job_result(hydra_cfg.runtime.output_dir, result)


def written_to(
    cfg: DictConfig | None = None, error: BaseException | None = None
) -> tuple[list[tuple[Path, str]], Path | None]:
    """The folders this run writes to, each with the setting that moves it, and the file
    of its SQLite store (None for a tracking server): what names a full disk. Without the
    config (Hydra failed before the app ran: `error`), Hydra's output folder and the temp
    folder."""
    places: list[tuple[Path, str]] = []
    store = None
    if error is not None and (output_dir := _hydra_output_dir(error)):
        places.append((output_dir, "hydra.run.dir"))
    try:
        if cfg is not None:
            data_dir = from_root(cfg.paths.data_dir)
            places.append((data_dir, "paths.data_dir"))
            for key in ("processed_dir", "raw_dir"):  # where moved out of paths.data_dir
                if cfg.get("data") and cfg.data.get(key):
                    folder = from_root(cfg.data[key])
                    if data_dir not in (folder, *folder.parents):
                        places.append((folder, f"data.{key}"))
        uri = (_given_tracking_uri or [os.environ.get("MLFLOW_TRACKING_URI")])[0]
        if uri and uri.startswith("sqlite:///"):
            store = Path(uri.removeprefix("sqlite:///").split("?")[0]).resolve()
            setting = "MLFLOW_TRACKING_URI"
        elif not uri and cfg is not None:
            store, setting = from_root(cfg.paths.mlruns_dir) / "mlflow.db", "paths.mlruns_dir"
        if store is not None:  # its artifacts beside it (tracking/store.py)
            places += [(store.parent, setting), (store.parent / "artifacts", setting)]
        if HydraConfig.initialized() and HydraConfig.get().runtime.output_dir:
            places.append((Path(HydraConfig.get().runtime.output_dir), "hydra.run.dir"))
    except Exception:  # noqa: BLE001 — a config too broken to read: name fewer places
        pass
    places.append((Path(tempfile.gettempdir()), "TMPDIR"))  # MLflow stages models there
    return places, store


def _hydra_output_dir(error: BaseException) -> Path | None:
    """The output folder of the Hydra job `error` ended, from Hydra's run_job frame (Hydra
    has reset its config by the time the error reaches us)."""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code.co_name == "run_job" and "output_dir" in frame.tb_frame.f_locals:
            return Path(os.path.abspath(frame.tb_frame.f_locals["output_dir"]))
        frame = frame.tb_next
    return None


def stopped(error: BaseException) -> None:
    """After a stop signal: end KILLED what this process still has RUNNING (a sweep's or a
    search's parent) and the runs of the processes it started, now ended (a sweep's
    children); say so in one line; exit 128 + the signal's number."""
    runs, store = (
        sys.modules.get("pipeline.tracking.runs"),
        sys.modules.get("pipeline.tracking.store"),
    )
    closed = list(runs.INTERRUPTED_RUNS) if runs else []
    if store and store.store_in_use():
        try:
            closed += store.close_own_runs(interrupts.reason(error)) + store.reap_orphans()
        except Exception as e:  # noqa: BLE001 — a store gone too: the reaper closes them later
            log.warning("could not close the runs left RUNNING: %s", logs.redact(str(e))[:300])
    log.error(
        "%s: stopped%s",
        interrupts.reason(error),
        f"; run(s) {', '.join(closed)} ended KILLED" if closed else "",
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: the interpreter would then wait for every non-daemon thread, and a
    # library's thread cut short by the signal (MLflow's, a database driver's) could keep
    # a stopped process alive indefinitely. The runs are closed and the logs flushed.
    os._exit(interrupts.exit_code(error))


def cli() -> None:
    """`python -m pipeline`: the Hydra app, with Hydra's own errors (an unknown key, a value
    of the wrong type, a group given a scalar) as one line and exit 2, as ours are; `--help`
    is this app's own (usage.py), not Hydra's generic page."""
    if {"--help", "-h"} & set(sys.argv[1:]):
        from pipeline import usage

        print(usage.text())
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra's errors reach us instead of printing them
    try:
        main()
    except KeyboardInterrupt as e:  # interrupts.Interrupted too  # a sweep's launcher
        stopped(e)
    except Exception as e:
        if (full := disk_full(e)) is not None:  # Hydra writing its output folder
            print(f"error: {disk_full_message(full, *written_to(error=e))}", file=sys.stderr)
            sys.exit(2)
        if interrupts.installed():  # raised after our code started: not a config mistake
            raise
        print(f"error: {config.override_error(e)}", file=sys.stderr)
        sys.exit(2)
    # The work is done and its runs closed: a stop signal from now on (the interpreter's
    # own shutdown) ends the process the usual way, with no traceback.
    for sig in interrupts.STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
