"""The stages `python -m pipeline stages=[...]` runs, in order: each a module with
`run(cfg, results) -> output`, thin (the work is in data/, families/, tracking/), importing
those libraries and never another stage. `results` maps the stages run so far in this
invocation to their outputs (evaluate reads the run ids that train returned).

A stage's module is imported only when it runs: `--help` and a mistaken override are
answered without loading MLflow, scikit-learn or matplotlib.
"""

STAGES = {  # name: what it does (python -m pipeline --help)
    "download": "fetch the four MNIST files from a mirror and check their MD5s",
    "preprocess": "pixels to [0, 1] floats, a stratified validation split, cached",
    "train": "our network and the scikit-learn baseline, each a tracked MLflow run",
    "evaluate": "confusion matrix and misclassified digits of each model just trained",
    "compare": "ours vs scikit-learn per config, from the runs in MLflow",
    "analyze": "what the network learned: weights, noise, memorising, η, seeds",
    "reproduce": "rerun a logged run from its config; does every metric match?",
    "register": "a run's model becomes its dataset's @champion (make serve serves it)",
    "search": "an Optuna study over search.space, a child run per trial",
}


def module(stage: str) -> str:
    return f"{__name__}.{stage}"
