"""End to end: a store made as a user makes it, then `python -m pipeline.serve.ui`, then Chromium.

The store, on the bundled 8×8 digits in one fresh experiment: a plain run (`make run`), a
smoke sweep (which registers its best run as digits-classifier@champion), a smoke search
(whose median pruner stops some trials) and an analysis of the plain run. A second
experiment holds a `make run` pair alone. Checks what a person reviewing it sees: the links
`make ui` prints open, in a fresh browser at 1440×900 with no click, the runs view: both
accuracies of the pair on screen, the better first, and the sweep parent's row with the
winner's accuracy (either family); the root link opens model training with the Assistant
closed; a run's page opens on the pair and links their compare view; printed links follow
the UI's port; the runs table shows the named runs and, once picked in the column selector,
the val_accuracy and test_accuracy columns; the parent expands to its children; a child's
page shows its params and test_accuracy; the compare view of an ours/scikit-learn pair shows
every shared config param filled on both sides; the results by config render as a table; a
pruned trial shows the status icon of a finished run, not a failed one; a run shows both
families' learning curves on one chart; the parent's summary plots are among its artifacts;
the registered model page shows the champion alias on its version; the analysis run's
report/analysis.html renders in the artifact view. Screenshots go to test-artifacts/e2e/.
Needs Debian's chromium (apt-get install chromium chromium-driver); without it the test
skips, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import json
import re

import pytest
from helpers import RESULTS_BY_CONFIG_COLUMNS, SMALL_ANALYSIS, free_port, run_app, wait_for
from helpers.browser import browser_or_skip, chromium
from mlflow.tracking import MlflowClient

from pipeline.paths import PROJECT_ROOT

pytestmark = pytest.mark.e2e
SHOTS = PROJECT_ROOT / "test-artifacts" / "e2e"


EXPERIMENT = "digits"
PAIR_EXPERIMENT = "digits-run"  # `make run` alone: ours and scikit-learn's run of one config
MODEL = "digits-classifier"
OUTSIDE_SETTINGS_REMOVED = {"MLFLOW_TRACKING_URI": None, "PIPELINE_DATA_MIRROR": None}


def _pipeline(args, tmp, experiment=EXPERIMENT):
    """`python -m pipeline` into the store tmp/mlruns, as a user runs it: no tracking URI or
    data mirror from outside; what it printed."""
    common = [
        f"paths.mlruns_dir={tmp / 'mlruns'}",
        f"paths.data_dir={tmp / 'data'}",
        f"tracking.experiment={experiment}",
    ]
    result = run_app(*args, *common, env=OUTSIDE_SETTINGS_REMOVED, timeout=600)
    assert result.returncode == 0, f"{args}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """`make run`, a smoke sweep and an analysis in a fresh store; the UI serving it."""
    browser_or_skip()
    tmp = tmp_path_factory.mktemp("e2e")
    mlruns = tmp / "mlruns"
    client = MlflowClient(f"sqlite:///{mlruns / 'mlflow.db'}")
    printed = _pipeline(["data=digits", f"hydra.run.dir={tmp / 'pair'}"], tmp, PAIR_EXPERIMENT)
    _pipeline(["data=digits", "train.epochs=3", f"hydra.run.dir={tmp / 'run'}"], tmp)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    plain = {r.data.tags["model_family"]: r for r in client.search_runs([experiment.experiment_id])}
    assert set(plain) == {"numpy_mlp", "sklearn_mlp"}
    # its jobs one at a time in its own process: the store is the same, the workers' imports
    # saved (parallel sweeps: test_sweep, test_misbehaviour)
    _pipeline(
        ["sweep=smoke", "hydra.launcher.n_jobs=1", f"hydra.sweep.dir={tmp / 'multirun'}"], tmp
    )
    _pipeline(["search=smoke", f"hydra.run.dir={tmp / 'search'}"], tmp)
    _pipeline(
        [
            "stages=[analyze]",
            "data=digits",
            f"analyze.run_id={plain['numpy_mlp'].info.run_id}",
            f"hydra.run.dir={tmp / 'analyze'}",
            *SMALL_ANALYSIS,
        ],
        tmp,
    )
    runs = client.search_runs([experiment.experiment_id])
    pair_experiment = client.get_experiment_by_name(PAIR_EXPERIMENT).experiment_id
    pair = {r.data.tags["model_family"]: r for r in client.search_runs([pair_experiment])}
    port = free_port()
    log = tmp / "ui.log"  # a file, not a pipe nobody reads: a full pipe would stall the server
    server = run_app(
        "--port",
        port,
        "--mlruns",
        mlruns,
        module="pipeline.serve.ui",
        env=OUTSIDE_SETTINGS_REMOVED,
        popen=True,
        log=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # `make ui` prints its links once it answers: a link per experiment that opens it in
        # the model-training view
        wait_for("make ui's links", lambda: "MLflow UI:" in log.read_text(), server, log=log)
        links = dict(
            line.strip().split(": ", 1)
            for line in log.read_text().splitlines()
            if line.startswith("  ") and ": http" in line
        )
        yield {
            "printed_with_no_ui": printed,
            "url": url,
            "experiment_id": experiment.experiment_id,
            "runs": runs,
            "port": port,
            "mlruns": mlruns,
            "client": client,
            "plain": plain,
            "pair": pair,
            "pair_experiment_id": pair_experiment,
            "links": links,
            "tmp": tmp,
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(ui):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium() as browser:
        yield browser


def _new_page(browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(60_000)
    return page


@pytest.fixture(scope="module")
def page(ui, browser):
    """A reviewer's browser, kept from test to test (the UI remembers what was picked)."""
    page = _new_page(browser)
    yield page
    page.close()


def _first_visit(browser):
    """A new browser profile (nothing in its localStorage) at 1440×900, as a person's."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(60_000)
    return page


def _on_screen(locator) -> bool:
    """Is the element wholly inside the 1440×900 window, with no scrolling?"""
    box = locator.bounding_box()
    return box is not None and box["x"] + box["width"] <= 1440 and box["y"] + box["height"] <= 900


def _runs_by_kind(runs, kind="sweep"):
    parent = next(r for r in runs if r.data.tags.get("kind") == kind)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def _analysis(runs):
    return next(r for r in runs if r.data.tags.get("kind") == "analysis")


def _show_metric_columns(page, *metrics):
    """As a person does: Columns, search the metric's name, tick it under Metrics (unless
    shown already: the UI remembers the columns picked on an earlier visit)."""
    for metric in metrics:
        if page.locator(f".ag-header-cell[col-id='metrics.`{metric}`']").count():
            continue
        page.get_by_role("button", name="Columns", exact=True).click()
        page.get_by_placeholder("Search columns").fill(metric)
        tree = page.get_by_test_id("column-selector-tree")
        # Metrics come before Parameters in the tree; the title must be the name exactly.
        tree.locator(".du-bois-light-tree-title").filter(
            has_text=re.compile(f"^{re.escape(metric)}$")
        ).first.click()
        page.keyboard.press("Escape")
        page.locator(f".ag-header-cell[col-id='metrics.`{metric}`']").first.wait_for()


def _see(page, texts, shot):
    """Wait until the page shows each of texts, then save a screenshot named shot."""
    for text in texts:
        page.get_by_text(text).first.wait_for()
    page.screenshot(path=str(SHOTS / shot))


def _open_artifacts(page, ui, run_id):
    """A run's Artifacts tab, loaded afresh: MLflow 3.17's single-page app can show
    "Something went wrong" when it arrives there from another run's artifact views (a
    reload, as a person would do, shows the page)."""
    page.goto(f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs/{run_id}/artifacts")
    page.reload()


def _cell(page, run_name, col_id):
    """The runs table's cell of column col_id in the row of the run named run_name."""
    name = page.locator("[col-id='attributes.`Run Name`']").get_by_text(run_name, exact=True).first
    row_index = name.locator("xpath=ancestor::*[@role='row'][1]").get_attribute("row-index")
    return page.locator(f"[role=row][row-index='{row_index}'] [col-id='{col_id}']").first


def test_server_binds_to_loopback_and_refuses_a_taken_port(ui):
    port, mlruns = ui["port"], ui["mlruns"]
    result = run_app("--port", port, "--mlruns", mlruns, module="pipeline.serve.ui")
    assert result.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_experiment_opens_in_the_model_training_view(ui, browser):
    """A first visit (a fresh browser) following the link `make ui` prints for the experiment.

    (MLflow 3.17's UI does not read the experiment's mlflow.experimentKind tag, which the
    pipeline sets: the link carries ?workflowType=machine_learning, which the UI honours,
    and the page `make ui` serves makes model training a new browser's choice.)"""
    link = ui["links"][EXPERIMENT]
    assert link == (
        f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs"
        "?viewStateShareKey=review&workflowType=machine_learning"
    )
    page = _first_visit(browser)
    try:
        page.goto(link)
        page.get_by_role("button", name="Columns", exact=True).wait_for(timeout=15_000)
        page.get_by_text("sweep smoke").first.wait_for()  # the runs table, with the sweep
        page.screenshot(path=str(SHOTS / "experiment_opened.png"))
        assert re.search(rf"#/experiments/{ui['experiment_id']}/runs", page.url), page.url
    finally:
        page.close()


def test_the_root_link_opens_on_model_training_with_the_assistant_closed(ui, browser):
    """`make ui`'s first link (the UI's root) in a fresh browser: MLflow would open its
    GenAI home and its Assistant panel; the page make ui serves picks model training."""
    page = _first_visit(browser)
    try:
        page.goto(ui["url"])
        page.get_by_text("Recent Experiments").first.wait_for()
        page.wait_for_timeout(2000)  # time for a panel that opens itself to open
        page.screenshot(path=str(SHOTS / "root.png"))
        workflow = page.evaluate("localStorage.getItem('mlflow.workflowType_v1')")
        assert workflow == '"machine_learning"'
        assert page.locator("[data-component-id='mlflow.assistant.chat_panel.close']").count() == 0
        page.get_by_text(EXPERIMENT, exact=True).first.click()  # from the list, as a person
        page.get_by_role("button", name="Columns", exact=True).wait_for(timeout=15_000)
        assert "/runs" in page.url, page.url  # the runs table, not the GenAI overview
    finally:
        page.close()


def test_the_printed_link_opens_on_both_accuracies_of_a_pair_best_first(ui, browser):
    """`make run`, then the link `make ui` prints for its experiment, in a fresh browser at
    1440×900, with no click: both runs' test accuracy on screen, the better one first, and
    each name whole."""
    pair = sorted(ui["pair"].values(), key=lambda r: r.data.metrics["test_accuracy"], reverse=True)
    assert pair[0].data.metrics["test_accuracy"] > pair[1].data.metrics["test_accuracy"]
    page = _first_visit(browser)
    try:
        page.goto(ui["links"][PAIR_EXPERIMENT])
        rows = []
        for run in pair:
            for metric in ("test_accuracy", "val_accuracy"):
                cell = _cell(page, run.info.run_name, f"metrics.`{metric}`")
                cell.wait_for()
                assert float(cell.inner_text()) == pytest.approx(run.data.metrics[metric])
                assert _on_screen(cell), (run.info.run_name, metric, cell.bounding_box())
            name = page.locator("[col-id='attributes.`Run Name`']").get_by_text(
                run.info.run_name, exact=True
            )
            assert name.evaluate("e => e.scrollWidth <= e.clientWidth"), run.info.run_name
            row = name.first.locator("xpath=ancestor::*[@role='row'][1]")
            rows.append(int(row.get_attribute("row-index")))
        assert rows[0] < rows[1], "the better run of the pair is not first"
        page.screenshot(path=str(SHOTS / "runs_view_pair.png"))
    finally:
        page.close()


def test_a_runs_page_opens_on_the_pair_and_links_their_compare_view(ui, browser):
    ours, theirs = ui["pair"]["numpy_mlp"], ui["pair"]["sklearn_mlp"]
    a, b = (r.data.metrics["test_accuracy"] for r in (ours, theirs))
    line = f"ours {a:.4f} · sklearn {b:.4f} · {100 * (a - b):+.2f} pt"
    page = _first_visit(browser)
    try:
        page.goto(
            f"{ui['url']}/#/experiments/{ui['pair_experiment_id']}/runs/{ours.info.run_id}"
            "?workflowType=machine_learning"
        )
        shown = page.get_by_text(line, exact=True).first
        shown.wait_for()
        assert _on_screen(shown)
        page.screenshot(path=str(SHOTS / "run_page_pair.png"))
        with page.expect_popup() as opened:  # MLflow opens a description's links in a new tab
            page.get_by_role("link", name="compare them").first.click()
        compare = opened.value
        compare.get_by_text(theirs.info.run_name).first.wait_for()
        assert "#/compare-runs" in compare.url
        assert ours.info.run_id in compare.url and theirs.info.run_id in compare.url
        compare.screenshot(path=str(SHOTS / "compare_from_run_page.png"))
        compare.close()
    finally:
        page.close()


def test_printed_links_follow_the_ui_and_name_make_ui_when_none_runs(ui):
    """A command prints links to the `make ui` serving its store, on that UI's port; run
    while no UI served the store, it said how to start one instead of a dead link."""
    before = [line for line in ui["printed_with_no_ui"].splitlines() if "open them" in line]
    assert before == [
        "open them: `make ui` (no MLflow UI serves this store now; it prints the links)"
    ]
    printed = _pipeline(
        ["data=digits", "train.epochs=1", "baseline=none"],
        ui["tmp"],
        "digits-links",
    )
    (line,) = [line for line in printed.splitlines() if line.startswith("open them: ")]
    assert line.startswith(f"open them: http://127.0.0.1:{ui['port']}/#/experiments/"), line


def test_the_runs_table_shows_named_runs_and_the_accuracy_columns(ui, page):
    plain = ui["plain"]
    parent, _ = _runs_by_kind(ui["runs"])
    analysis = _analysis(ui["runs"])
    assert parent.info.run_name == "sweep smoke"
    assert analysis.info.run_name == f"analysis of {plain['numpy_mlp'].info.run_name}"
    page.goto(f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs?workflowType=machine_learning")
    for run in (*plain.values(), parent, analysis):
        page.get_by_text(run.info.run_name).first.wait_for()
    assert {family: run.info.run_name for family, run in plain.items()} == {
        "numpy_mlp": "ours classic 16-16 sigmoid η=3 m=10",
        "sklearn_mlp": "sklearn classic 16-16 sigmoid η=3 m=10",
    }
    _show_metric_columns(page, "val_accuracy", "test_accuracy")
    for run in plain.values():
        for metric in ("val_accuracy", "test_accuracy"):
            shown = _cell(page, run.info.run_name, f"metrics.`{metric}`").inner_text()
            assert float(shown) == pytest.approx(run.data.metrics[metric]), (
                run.info.run_name,
                metric,
            )
    page.screenshot(path=str(SHOTS / "runs_table.png"))


def test_the_sweep_parent_expands_to_its_children(ui, page):
    parent, children = _runs_by_kind(ui["runs"])
    assert len(children) == 4
    assert {c.info.run_name.split()[0] for c in children} == {"ours", "sklearn"}
    page.goto(f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs?workflowType=machine_learning")
    page.get_by_text(parent.info.run_name).first.wait_for()
    # Child runs are nested under the parent, collapsed: expand it with the row's toggle.
    row = page.locator("[role=row]", has_text=parent.info.run_name).first
    row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    _see(page, [child.info.run_name for child in children], "experiment_runs.png")


def test_a_child_run_page_shows_its_params_and_test_accuracy(ui, page):
    _, children = _runs_by_kind(ui["runs"])
    child = next(c for c in children if c.data.tags["model_family"] == "numpy_mlp")
    page.goto(f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs/{child.info.run_id}")
    value = f"{child.data.metrics['test_accuracy']:.4g}"[:5]
    _see(page, [child.info.run_name, "test_accuracy", "model.hidden_sizes", value], "child_run.png")


def test_the_sweep_parent_row_shows_the_winner_of_either_family(ui, browser):
    parent, children = _runs_by_kind(ui["runs"])
    (winner,) = [c for c in children if c.info.run_id == parent.data.tags["best_child_run_id"]]
    assert winner.data.metrics["val_accuracy"] == max(
        c.data.metrics["val_accuracy"] for c in children
    )
    page = _first_visit(browser)  # the printed link, no click: the columns are there
    try:
        page.goto(ui["links"][EXPERIMENT])
        page.get_by_text(parent.info.run_name).first.wait_for()
        for metric in ("val_accuracy", "test_accuracy"):
            shown = _cell(page, parent.info.run_name, f"metrics.`{metric}`").inner_text()
            assert float(shown) == pytest.approx(winner.data.metrics[metric]), metric
        page.screenshot(path=str(SHOTS / "runs_table_winner.png"))
    finally:
        page.close()


def test_the_compare_view_of_a_pair_shows_the_config_filled_on_both_sides(ui, page):
    """ours and scikit-learn's run of one config: each param both log (cost, init, dtype,
    family…) shows a value in both columns, as each run logged it; only scikit-learn's own
    get_params() (sklearn.*) is one-sided."""
    ours, theirs = ui["plain"]["numpy_mlp"], ui["plain"]["sklearn_mlp"]
    shared = set(ours.data.params) & set(theirs.data.params)
    one_sided = set(ours.data.params) ^ set(theirs.data.params)
    assert {"family", "model.cost", "model.init", "train.schedule", "train.dtype"} <= shared
    assert all(key.startswith("sklearn.") for key in one_sided), one_sided
    ids = json.dumps([ours.info.run_id, theirs.info.run_id])
    experiments = json.dumps([ui["experiment_id"]])
    page.goto(f"{ui['url']}/#/compare-runs?runs={ids}&experiments={experiments}")
    page.get_by_text(ours.info.run_name).first.wait_for()
    page.screenshot(path=str(SHOTS / "compare_pair.png"))
    for key in sorted(shared):
        row = page.locator("tr", has=page.locator("th", has_text=re.compile(f"^{re.escape(key)}$")))
        cells = [_value(text) for text in row.first.locator("td").all_inner_texts()]
        logged = [_value(run.data.params[key]) for run in (ours, theirs)]
        if len(cells) == 1:  # the view merges a list value that both runs share into one cell
            cells *= 2
        assert cells == logged, key  # in the order of the runs in the URL


def _value(text: str):
    """A param as shown or logged: JSON (lists; shown pretty-printed) parsed, else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def test_the_results_by_config_render_as_a_table(ui, browser):
    page = _new_page(browser)  # a table artifact upsets MLflow's later artifact views
    parent, _ = _runs_by_kind(ui["runs"])
    _open_artifacts(page, ui, parent.info.run_id)
    page.get_by_text("summary", exact=True).first.click()
    page.get_by_text("results_by_config.json").first.click()
    headers = page.get_by_role("columnheader")
    headers.filter(has_text="ours − sklearn (test)").first.wait_for()
    assert headers.all_inner_texts() == RESULTS_BY_CONFIG_COLUMNS
    rows = page.get_by_role("row").filter(has=page.get_by_role("cell"))
    assert rows.count() == 2  # a row per config of the smoke sweep
    page.screenshot(path=str(SHOTS / "results_table.png"))
    page.close()


def _status_icon(page, run_name):
    """The status icon of a run's row (the Created column), as markup."""
    cell = _cell(page, run_name, "runDateAndNestInfo")
    return cell.locator("[role=img]").first.evaluate("e => e.outerHTML")


def test_a_pruned_trial_is_shown_finished_not_failed(ui, page):
    parent, trials = _runs_by_kind(ui["runs"], "search")
    pruned = [t for t in trials if t.data.tags.get("stopped") == "pruned"]
    assert pruned, "the smoke search pruned no trial"
    assert {t.info.status for t in pruned} == {"FINISHED"}
    page.goto(f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs?workflowType=machine_learning")
    row = page.locator("[role=row]", has_text=parent.info.run_name).first
    row.locator("button[data-component-id*='runnamecellrenderer']").first.click()
    page.get_by_text(pruned[0].info.run_name).first.wait_for()
    finished = _status_icon(page, ui["plain"]["numpy_mlp"].info.run_name)
    assert _status_icon(page, pruned[0].info.run_name) == finished
    page.screenshot(path=str(SHOTS / "search_pruned.png"))


def test_a_run_shows_both_families_learning_curves_on_one_chart(ui, page):
    ours = ui["plain"]["numpy_mlp"]
    for run in ui["plain"].values():  # the same chart on both runs of the pair
        logged = {a.path for a in ui["client"].list_artifacts(run.info.run_id)}
        assert "learning_curves.png" in logged, run.info.run_name
    page.goto(f"{ui['url']}/#/experiments/{ui['experiment_id']}/runs/{ours.info.run_id}/artifacts")
    page.get_by_text("learning_curves.png", exact=True).first.click()
    page.wait_for_function("() => [...document.images].some(i => i.naturalWidth > 400)")
    page.screenshot(path=str(SHOTS / "learning_curves.png"))


def test_the_parent_run_lists_its_summary_plots(ui, page):
    parent, _ = _runs_by_kind(ui["runs"])
    _open_artifacts(page, ui, parent.info.run_id)
    page.get_by_text("summary").first.click()
    page.get_by_text("test_accuracy_vs_hidden_sizes.png").first.wait_for()
    page.get_by_text("test_accuracy_vs_hidden_sizes.png").first.click()
    page.locator("img").first.wait_for()
    page.screenshot(path=str(SHOTS / "parent_artifacts.png"))
    assert page.get_by_text("results.csv").count() >= 1


def test_the_registered_model_page_shows_the_champion_alias(ui, page):
    champion = ui["client"].get_model_version_by_alias(MODEL, "champion")
    parent, children = _runs_by_kind(ui["runs"])
    assert champion.run_id in {c.info.run_id for c in children}
    page.goto(f"{ui['url']}/#/models/{MODEL}")
    page.get_by_role("heading", name=MODEL).first.wait_for()
    row = page.locator("tr, [role=row]", has_text=f"Version {champion.version}").first
    row.get_by_text("champion").first.wait_for()
    page.screenshot(path=str(SHOTS / "registered_model.png"))


def test_the_analysis_run_renders_its_html_report(ui, page):
    analysis = _analysis(ui["runs"])
    assert analysis.data.params["analyzed_run_id"] == ui["plain"]["numpy_mlp"].info.run_id
    _open_artifacts(page, ui, analysis.info.run_id)
    page.get_by_text("report", exact=True).first.click()
    page.get_by_text("analysis.html", exact=True).first.click()
    report = page.frame_locator("iframe").first
    report.get_by_text("First-layer weights").first.wait_for()
    figure = report.locator("img").first
    figure.wait_for()
    assert figure.evaluate("img => img.complete && img.naturalWidth > 200")
    page.screenshot(path=str(SHOTS / "analysis_report.png"))
