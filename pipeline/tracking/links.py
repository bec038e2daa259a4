"""Where a person opens runs: the MLflow UI that serves this store, on a view that answers.

The view. Every experiment carries a runs-table view of its own (an experiment tag
`mlflow.sharedViewState.<VIEW>`, read by MLflow's UI when a link says
`viewStateShareKey=<VIEW>`): test and validation accuracy as columns (a sweep's or search's
parent row holds its winner's), the best run first, names shown whole, then the settings
that vary. A link to an experiment opens that view, with no click, in any browser.

The UI. `make ui` records where it serves a store (a file per server in the store's
folder, `.ui/<pid>.json`) once it answers, and removes it when it stops; a command that
prints a link reads it, so links follow `make ui PORT=5600`. A tracking server's URI is
its own UI. With no UI serving the store, a command says how to start one instead of
printing a link to a port where nothing answers.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from urllib.parse import quote

from pipeline.logs import redact
from pipeline.paths import atomic_write, process_alive, process_start

VIEW = "review"
ACCURACY = ("metrics.`test_accuracy`", "metrics.`val_accuracy`")
SETTINGS = (  # beside the accuracy: whether a trial was pruned, then what sweeps vary
    "tags.`stopped`",  # "pruned" on a search's pruned trials, empty elsewhere
    "params.`model.hidden_sizes`",
    "params.`model.activation`",
    "params.`train.learning_rate`",
    "params.`train.batch_size`",
    "params.`seed`",
)
RUN_NAME = "attributes.`Run Name`"
CREATED = "runDateAndNestInfo"  # the state icon, the start time and a parent's expander
# Widths in pixels: at 1440×900 the name, both accuracies and the four settings fit.
WIDTHS = {
    RUN_NAME: 330,
    CREATED: 130,
    **dict.fromkeys(ACCURACY, 96),
    SETTINGS[0]: 76,
    SETTINGS[1]: 100,
    SETTINGS[2]: 90,
    SETTINGS[3]: 120,
    SETTINGS[4]: 110,
    SETTINGS[5]: 70,
}


def view_state() -> str:
    """The runs table's state as MLflow's UI saves a view (Views → Save as new view): the
    columns shown beside the name, their order and widths, the sort; as JSON."""
    columns = [*ACCURACY, *SETTINGS]
    return json.dumps(
        {
            "orderByKey": ACCURACY[0],
            "orderByAsc": False,
            "selectedColumns": columns,
            "columnOrder": [RUN_NAME, *columns, CREATED],
            "columnWidths": WIDTHS,
        }
    )


def view_tags() -> dict[str, str]:
    """The experiment tags that give an experiment its view."""
    return {f"mlflow.sharedViewState.{VIEW}": view_state()}


# ---- links -----------------------------------------------------------------------------


def experiment_page(experiment_id: str) -> str:
    """An experiment's runs table, in its view and the model-training view (a URL's path
    after the UI's base)."""
    return (
        f"/#/experiments/{experiment_id}/runs"
        f"?viewStateShareKey={VIEW}&workflowType=machine_learning"
    )


def run_page(experiment_id: str, run_id: str) -> str:
    """One run's page."""
    return f"/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def compare_page(experiment_id: str, run_ids: list[str]) -> str:
    """The compare view of runs of one experiment."""
    runs = quote(json.dumps(run_ids), safe="")
    experiments = quote(json.dumps([experiment_id]), safe="")
    return f"/#/compare-runs?runs={runs}&experiments={experiments}"


def ui_base(uri: str) -> str | None:
    """The UI of the store at uri: its tracking server (credentials stripped), else the
    `make ui` serving it now on this host; None if none does."""
    if uri.startswith("http"):
        return redact(uri).rstrip("/")
    if uri.startswith("sqlite:///"):
        return served_by(Path(uri.removeprefix("sqlite:///")).parent)
    return None


def where(uri: str, page: str) -> str:
    """page (experiment_page, run_page, ...) on the UI of the store at uri, or how to
    start one."""
    base = ui_base(uri)
    if base is None:
        return "`make ui` (no MLflow UI serves this store now; it prints the links)"
    return base + page


# ---- which `make ui` serves a store ----------------------------------------------------


def _servers(mlruns: Path) -> list[tuple[Path, dict | None]]:
    """Each server note in the store's folder, oldest first, with what it says (None if
    unreadable)."""
    found = []
    for note in (mlruns / ".ui").glob("*.json"):
        try:  # a server may remove its note while we read
            found.append((note.stat().st_mtime, note, json.loads(note.read_text())))
        except (OSError, ValueError):
            found.append((0.0, note, None))
    return [(note, server) for _, note, server in sorted(found, key=lambda f: f[0])]


def _live(server: dict | None) -> bool:
    """Is the server a note describes running now, on this host?"""
    if not isinstance(server, dict) or server.get("host") != socket.gethostname():
        return False
    pid = server.get("pid")
    return isinstance(pid, int) and process_alive(pid, str(server.get("pid_started", "")))


def served_by(mlruns: Path) -> str | None:
    """The URL of the newest live `make ui` of this host serving the store in mlruns."""
    live = [server["url"] for _, server in _servers(mlruns) if server and _live(server)]
    return str(live[-1]) if live else None


def record_server(mlruns: Path, url: str) -> Path | None:
    """Note that this process serves the store in mlruns at url (links follow it); the
    note's path, or None if the folder is not writable (links then say `make ui`).
    Notes of servers that ended without removing theirs (kill -9) are removed."""
    pid = os.getpid()
    server = {
        "url": url,
        "host": socket.gethostname(),
        "pid": pid,
        "pid_started": process_start(pid),
    }
    note = mlruns / ".ui" / f"{pid}.json"
    try:
        for stale, other in _servers(mlruns):
            if not _live(other):
                stale.unlink(missing_ok=True)
        with atomic_write(note, "w") as f:
            f.write(json.dumps(server))
    except OSError:
        return None
    return note
