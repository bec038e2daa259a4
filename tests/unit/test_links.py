"""Links a command prints: they follow the `make ui` that serves the store, and never
point at a port where nothing answers (pipeline/tracking/links.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pipeline.tracking import links

NO_UI = "`make ui` (no MLflow UI serves this store now; it prints the links)"


def _uri(mlruns):
    return f"sqlite:///{mlruns / 'mlflow.db'}"


def test_with_no_ui_a_link_says_how_to_start_one(tmp_path):
    page = links.experiment_page("3")
    assert links.where(_uri(tmp_path), page) == NO_UI
    assert links.where("http://user:secret@tracking:5000/", page) == (
        "http://user:***@tracking:5000" + page
    )


def test_a_link_follows_the_live_ui_and_not_one_that_ended(tmp_path):
    page = links.run_page("3", "abc")
    note = links.record_server(tmp_path, "http://127.0.0.1:5600")
    assert note is not None and note.exists()
    assert links.where(_uri(tmp_path), page) == "http://127.0.0.1:5600" + page
    # a server killed without removing its note: a process that has ended
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead = {"url": "http://127.0.0.1:5700", "host": os.uname().nodename, "pid": int(ended.stdout)}
    (tmp_path / ".ui" / f"{dead['pid']}.json").write_text(json.dumps(dead))
    assert links.where(_uri(tmp_path), page) == "http://127.0.0.1:5600" + page
    note.unlink()
    assert links.where(_uri(tmp_path), page) == NO_UI
    (tmp_path / ".ui" / "junk.json").write_text("{not json")
    assert links.where(_uri(tmp_path), page) == NO_UI
    # the next server's note clears the dead ones
    links.record_server(tmp_path, "http://127.0.0.1:5800")
    assert [p.name for p in (tmp_path / ".ui").iterdir()] == [f"{os.getpid()}.json"]


def test_the_view_sorts_by_test_accuracy_and_shows_both_accuracies_first():
    state = json.loads(links.view_state())
    assert state["orderByKey"] == "metrics.`test_accuracy`" and state["orderByAsc"] is False
    assert state["selectedColumns"][:2] == ["metrics.`test_accuracy`", "metrics.`val_accuracy`"]
    assert state["columnOrder"][:3] == [links.RUN_NAME, *state["selectedColumns"][:2]]
    assert set(state["columnWidths"]) == set(state["columnOrder"])
    assert "viewStateShareKey=review" in links.experiment_page("7")
