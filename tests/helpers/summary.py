"""Checks of the summary a sweep or a search prints when it ends (parents.summary_lines),
against its runs in MLflow (test_sweep, test_search)."""

from __future__ import annotations

import re

WIDTH = 100
ACCURACY = re.compile(r"^(\d\.\d{4}|—)$")  # 4 decimals, or none (a pruned trial's test)


def printed_summary(output: str, best_run_id: str, children: dict) -> list[dict[str, str]]:
    """Check the summary in a command's output against the parent's best child and its
    children ({run_id: mlflow Run}): at most WIDTH columns; a row per child, best first by
    val_acc; accuracies to 4 decimals; the family as ours/sklearn; the best child (the
    parent's best_child_run_id) marked ★ and named under the table. Returns the rows,
    {column: text} (the mark as 'mark')."""
    lines = output.splitlines()
    (start,) = [i for i, line in enumerate(lines) if "best first by val_acc" in line]
    end = lines.index(f"  run {best_run_id}", start)  # the winner's id closes it
    block = lines[start : end + 1]
    too_long = [line for line in block if len(line) > WIDTH]
    assert not too_long, "\n".join(block)
    assert not {"numpy_mlp", "sklearn_mlp"} & set(" ".join(block).split()), "\n".join(block)
    header = next(i for i, line in enumerate(block) if {"val_acc", "test_acc"} <= set(line.split()))
    columns = block[header].split()
    winner_line = next(i for i, line in enumerate(block) if line.startswith("★ winner "))
    rows = [
        {"mark": line[0], **dict(zip(columns, line[1:].split(), strict=True))}
        for line in block[header + 1 : winner_line]
    ]
    assert len(rows) == len(children), "\n".join(block)
    assert {r.get("family", "ours") for r in rows} <= {"ours", "sklearn"}

    val = [float(r["val_acc"]) for r in rows]
    assert val == sorted(val, reverse=True), "not best first by val_acc:\n" + "\n".join(block)
    assert all(ACCURACY.match(r["val_acc"]) and ACCURACY.match(r["test_acc"]) for r in rows)
    printed = sorted(r["val_acc"] for r in rows)
    logged = sorted(f"{c.data.metrics['val_accuracy']:.4f}" for c in children.values())
    assert printed == logged

    marked = [r for r in rows if r["mark"] == "★"]
    assert len(marked) == 1 and all(r["mark"] == " " for r in rows if r is not marked[0])
    best = children[best_run_id].data.metrics
    assert marked[0]["val_acc"] == f"{best['val_accuracy']:.4f}"
    assert marked[0]["test_acc"] == f"{best['test_accuracy']:.4f}"
    assert f"val_acc {best['val_accuracy']:.4f}" in block[winner_line]
    assert children[best_run_id].info.run_name[:40] in block[winner_line]
    return rows
