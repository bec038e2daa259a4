"""The one loop: any family (base.Family) trained as a tracked MLflow run.

Each run logs the resolved config as params and config.yaml, the environment it ran on
(env.* tags), per-epoch metrics, the final metrics on the untouched test set (names and
definitions: metrics.py), the dataset with its digest, and the model. With train.keep=best
a family that can (keeps_best) ends with the weights of its best validation epoch
(selection on validation; test is measured once, on the kept weights); otherwise with the
last epoch's (the book's way). A run that fails ends FAILED with the reason as a tag.

train_side_by_side trains several families at once, each in a process of its own forked
from this one, where train() runs as it does here: the same runs, bit for bit.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import mlflow

from pipeline import interrupts, progress
from pipeline.engine import DivergenceError
from pipeline.errors import RunFailed
from pipeline.families import metrics
from pipeline.families.base import Family
from pipeline.tracking import runs, store

log = logging.getLogger(__name__)

# report(epoch, metrics) sees each epoch's logged metrics; it may stop the run by raising
# errors.RunStopped (a search's pruner does).
Report = Callable[[int, dict], None]


def train(family: Family, cfg, data, report: Report | None = None, show_bar: bool = True) -> str:
    """Train `family` on `data` as one tracked run; return its id. show_bar=False: no
    progress bar here (the caller draws it, from `report`)."""
    x, y = data.x("train"), data.y("train")
    x_val, y_val = data.x("val"), data.y("val")
    keep_best = cfg.train.keep == "best" and family.keeps_best
    best: dict[str, Any] = {"val_accuracy": -1.0, "epoch": 0, "snapshot": None}
    seconds = []
    with runs.training_run(cfg, data, family) as active:
        model = family.build(cfg, x)
        if extra := family.model_params(model, cfg):
            mlflow.log_params(extra)
        with progress.bar(
            cfg.train.epochs,
            f"train {family.label}",
            "epoch",
            cfg.quiet or not show_bar,
            leave=cfg.tracking.parent_run_id is None,  # a trial's bar goes when it ends
        ) as bar:

            def on_epoch(epoch: int, learning_rate: float, epoch_seconds: float) -> None:
                objective, p_train = family.train_view(model, cfg, x, y)
                epoch_metrics = {
                    family.objective: objective,
                    **metrics.classification_metrics("train", p_train, y),
                    **metrics.classification_metrics(
                        "val", family.probabilities(model, x_val), y_val
                    ),
                    "learning_rate": learning_rate,
                    "epoch_seconds": epoch_seconds,
                }
                runs.log_metrics(epoch_metrics, step=epoch)
                seconds.append(epoch_seconds)
                if epoch_metrics["val_accuracy"] > best["val_accuracy"]:
                    best.update(
                        val_accuracy=epoch_metrics["val_accuracy"],
                        epoch=epoch,
                        snapshot=family.snapshot(model) if keep_best else None,
                    )
                bar.update()
                bar.set_postfix(val_accuracy=f"{epoch_metrics['val_accuracy']:.4f}")
                if report is not None:
                    report(epoch, epoch_metrics)

            family.fit(model, cfg, x, y, on_epoch)
        epochs = len(seconds)
        if keep_best and best["epoch"] != epochs:
            family.restore(model, best["snapshot"])
            # The run's val_* (latest value) must describe the weights it keeps: the sweep
            # selects on it, the registry quotes it.
            runs.log_metrics(
                metrics.classification_metrics("val", family.probabilities(model, x_val), y_val),
                step=epochs,
            )
        kept = best["epoch"] if keep_best else epochs
        mlflow.set_tag(
            "kept_epoch", f"{'best' if keep_best else 'final'} (epoch {kept} of {epochs})"
        )
        runs.log_metrics(
            {
                "best_epoch": best["epoch"],
                "best_val_accuracy": best["val_accuracy"],
                "kept_epoch": kept,
            }
        )
        if not cfg.data.label_shuffle:  # on shuffled labels, chance is the expected answer
            metrics.check_not_collapsed(cfg.train, family.probabilities(model, x_val), y_val)
        final = metrics.classification_metrics(
            "test", family.probabilities(model, data.x("test")), data.y("test")
        )
        runs.log_metrics({**final, "train_seconds": sum(seconds)})
        mlflow.set_tag("n_params", str(family.n_params(model)))
        log.info("train: %s test accuracy %.4f", family.name, final["test_accuracy"])
        if cfg.tracking.log_model:
            family.log_model(model, data)
        return active.info.run_id


# ---- families side by side ----------------------------------------------------------------

Outcome = str | Exception  # a run id, or why that family failed while the others went on


@dataclass
class _Worker:
    """A family training in a process of its own; `result` is the last thing it sent."""

    family: Family
    process: BaseProcess
    conn: Connection  # it sends ("epoch", val_accuracy) after each epoch, then its result
    result: tuple | None = None


def train_side_by_side(families: list[Family], cfg, data) -> list[Outcome]:
    """Train `families` at the same time, each by train() in a process of its own forked
    from this one: its own run in the same store, on the same data and config, on one BLAS
    thread — the same run, bit for bit, as train() here gives. Return, in their order,
    each one's run id or why it failed while the others went on: DivergenceError (its run
    ended FAILED), RunFailed (its process was killed; its run is closed KILLED).

    A stop signal, to this process (the app's handler passes it on) or to one of them
    alone, ends the runs still training KILLED with its reason, and is raised here
    (interrupts.Interrupted; a plain KeyboardInterrupt where the app's handler is not
    installed). Any other error is raised here once the others have ended."""
    # Here first: MLflow pointed at the store for what this process logs next (the pair's
    # note), and the experiment made once, not by both workers at once.
    store.setup(cfg)
    context = multiprocessing.get_context("fork")
    for stream in (sys.stdout, sys.stderr):  # else each child would print it again
        stream.flush()
    workers: list[_Worker] = []
    try:
        try:
            for family in families:
                receiver, sender = context.Pipe(duplex=False)
                process = context.Process(
                    target=_work, args=(family, cfg, data, sender), name=f"train {family.name}"
                )
                process.start()
                sender.close()  # the child's end: its end of the pipe closes when it ends
                workers.append(_Worker(family, process, receiver))
            stop_with = _collect(workers, cfg)
        except KeyboardInterrupt:  # a stop signal to this process
            _stop(workers, (interrupts.received() or interrupts.Interrupted(signal.SIGINT)).signum)
            raise
        if stop_with is not None:  # a stop signal that reached one of them alone stops them all
            _stop(workers, stop_with)
    finally:
        _finish(workers)
    for worker in workers:
        if worker.result and worker.result[0] == "interrupted":
            signum = worker.result[1]
            raise interrupts.Interrupted(signum) if signum else KeyboardInterrupt()
    for worker in workers:
        if worker.result and worker.result[0] == "error":
            _, error, where = worker.result
            error.add_note(f"(raised in the process training {worker.family.name}:\n{where})")
            raise error
    return [_outcome(worker) for worker in workers]


def _collect(workers: list[_Worker], cfg) -> int | None:
    """Read what the workers send, each one's epochs on a bar of its own, until each has
    sent its result or ended. If a stop signal ended one, return at once the signal to stop
    the others with."""
    with ExitStack() as stack:
        bars = {
            w.family.name: stack.enter_context(
                progress.bar(
                    cfg.train.epochs,
                    f"train {w.family.label}",
                    "epoch",
                    cfg.quiet,
                    leave=cfg.tracking.parent_run_id is None,
                )
            )
            for w in workers
        }
        training: dict[Any, _Worker] = {w.conn: w for w in workers}
        while training:
            for ready in wait(list(training)):
                worker = training[ready]
                try:
                    message = worker.conn.recv()
                except EOFError:  # it ended without a result (killed): its run, closed now
                    del training[ready]
                    worker.process.join()
                    store.reap_orphans()
                    continue
                if message[0] == "epoch":
                    bars[worker.family.name].update()
                    bars[worker.family.name].set_postfix(val_accuracy=f"{message[1]:.4f}")
                    continue
                del training[ready]
                worker.result = message
                if message[0] == "interrupted":
                    return message[1] or signal.SIGINT
    return None


def _stop(workers: list[_Worker], signum: int) -> None:
    """Pass stop signal `signum` on to the workers still training, so that each ends its
    run KILLED with its reason; SIGKILL one still there after interrupts.GRACE_SECONDS."""
    live = [w.process for w in workers if w.process.is_alive()]
    for process in live:
        if process.pid:
            with suppress(ProcessLookupError):
                os.kill(process.pid, signum)
    deadline = time.monotonic() + interrupts.GRACE_SECONDS
    for process in live:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            log.warning(
                "%s did not stop within %d s: killed", process.name, interrupts.GRACE_SECONDS
            )
            process.kill()


def _finish(workers: list[_Worker]) -> None:
    """Wait for the workers to end; take the result one sent after we stopped reading;
    close the runs of those that ended without one (killed) KILLED. The runs they ended
    KILLED are this process's interrupted runs too (the app names them when it stops)."""
    for worker in workers:
        worker.process.join()
        if worker.result is None:
            worker.result = _last_result(worker.conn)
        worker.conn.close()
    for worker in workers:
        if worker.result and worker.result[0] == "interrupted":
            runs.INTERRUPTED_RUNS.extend(worker.result[2])
    if any(worker.result is None for worker in workers):
        runs.INTERRUPTED_RUNS.extend(store.reap_orphans())


def _last_result(conn: Connection) -> tuple | None:
    """The result left in an ended worker's pipe, if any."""
    result = None
    with suppress(Exception):  # EOF; or a message cut by the signal that stopped our reading
        while conn.poll():
            message = conn.recv()
            if message[0] != "epoch":
                result = message
    return result


def _outcome(worker: _Worker) -> Outcome:
    if worker.result is None:
        code = worker.process.exitcode or 0
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        return RunFailed(f"its training process ended without a result ({how})")
    return worker.result[1]  # ("finished", run id) or ("failed", DivergenceError)


def _work(family: Family, cfg, data, conn: Connection) -> None:
    """A worker, in the forked process: train `family`, send the result, exit with the
    code the app would (0, 1, or 128 + the stop signal's number)."""

    def report(epoch: int, epoch_metrics: dict) -> None:
        with suppress(OSError):  # the parent gone: stop_with_parent ends this process
            conn.send(("epoch", epoch_metrics["val_accuracy"]))

    code = 0
    result: tuple
    try:
        _forget_inherited_connections()
        _hear_each_stop_once()
        interrupts.stop_with_parent()  # a parent killed by SIGKILL cannot stop it
        result = ("finished", train(family, cfg, data, report, show_bar=False))
    except DivergenceError as e:  # CollapseError too: its run ended FAILED with the reason
        result = ("failed", _sendable(e))
    except KeyboardInterrupt as e:  # interrupts.Interrupted: its run ended KILLED
        stop = e if isinstance(e, interrupts.Interrupted) else interrupts.received()
        result = ("interrupted", stop.signum if stop else None, list(runs.INTERRUPTED_RUNS))
        code = stop.exit_code if stop else 128 + signal.SIGINT
    except BaseException as e:  # its run ended FAILED; the parent raises it
        result = ("error", _sendable(e), traceback.format_exc())
        code = 1
    try:
        conn.send(result)
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        # Not the parent's exit: its atexit handlers are the parent's to run, and a
        # library's thread cut short by a signal must not keep this process alive.
        os._exit(code)


def _hear_each_stop_once() -> None:
    """In a worker under the app's handler: a Ctrl-C reaches it twice, from the terminal
    (it is in the app's process group) and passed on by the app; the second is the same
    stop, ignored without the handler's "again" warning (the app warns of a user's second
    Ctrl-C itself)."""
    if not interrupts.installed():
        return
    for signum in interrupts.STOP_SIGNALS:
        inherited = signal.getsignal(signum)

        def handler(sig, frame, inherited=inherited):
            stop = interrupts.received()
            if (stop is None or stop.signum != sig) and callable(inherited):
                inherited(sig, frame)

        signal.signal(signum, handler)


def _sendable(error: BaseException) -> BaseException:
    """`error`, if it survives the pipe to the parent (pickled); else its type and text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 — an exception whose constructor pickle cannot call
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error


# The database connection pools a worker inherited: kept, never used nor closed (a
# PostgreSQL connection closed here would end the parent's session).
_INHERITED_POOLS: list = []


def _forget_inherited_connections() -> None:
    """In a forked worker: give MLflow's database engines new connection pools, SQLAlchemy's
    advice after a fork (two processes on one connection, or one SQLite handle, corrupt
    each other's transactions)."""
    for name in (
        "mlflow.store.tracking.sqlalchemy_store",
        "mlflow.store.model_registry.sqlalchemy_store",
    ):
        module = sys.modules.get(name)
        engines = getattr(getattr(module, "SqlAlchemyStore", None), "_engine_map", {})
        for engine in list(engines.values()):
            _INHERITED_POOLS.append(engine.pool)
            engine.dispose(close=False)
