"""The stages `python -m pipeline stages=[...]` runs, in order: each a module with
`run(cfg, results) -> output`, thin (the work is in data/, families/, tracking/), importing
those libraries and never another stage. `results` maps the stages run so far in this
invocation to their outputs (evaluate reads the run ids that train returned)."""

STAGES = {
    name: f"pipeline.stages.{name}"
    for name in (
        "download",
        "preprocess",
        "train",
        "evaluate",
        "compare",
        "analyze",
        "reproduce",
        "register",
        "search",
    )
}
