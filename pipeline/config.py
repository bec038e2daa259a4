"""The config schema and its validation, run once at the boundary before any work.

The dataclasses are registered with Hydra as the schema of conf/config.yaml: a key that
does not exist or a value of the wrong type is rejected by Hydra with the key's name.
Value constraints (ranges, choices) are declared in CONSTRAINTS, scikit-learn style, and
checked by `validate`, which names every offending key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from pipeline.data import DATASETS, N_CLASSES
from pipeline.engine import ACTIVATIONS, COSTS, INITS, SCHEDULES, AugmentConfig, SGDConfig
from pipeline.errors import PipelineError
from pipeline.families import FAMILIES, OURS
from pipeline.paths import PROJECT_ROOT, check_writable, from_root


@dataclass
class PathsConfig:
    data_dir: str = "data"  # relative paths are taken from the project root
    mlruns_dir: str = "mlruns"


# Field metadata: the setting is part of the data split a run trains and is measured on.
SPLIT = {"split": True}


@dataclass
class DataConfig:
    name: str = field(default=MISSING, metadata=SPLIT)
    raw_dir: str | None = None
    processed_dir: str = "${paths.data_dir}/processed"
    mirrors: list[str] = field(default_factory=list)
    # Seconds a mirror may take for one file before the next mirror is tried (a mirror
    # that drips bytes never trips a per-read timeout).
    mirror_deadline: float = 300.0
    validation_size: int = field(default=MISSING, metadata=SPLIT)
    test_size: int | None = field(default=None, metadata=SPLIT)  # None: the official test set
    split_seed: int = field(default=0, metadata=SPLIT)
    # fraction of training labels permuted (1.0: random labels)
    label_shuffle: float = field(default=0.0, metadata=SPLIT)


@dataclass
class ModelConfig:
    """The network; the defaults are the classic recipe's (784-16-16-10 in conf/model/)."""

    name: str = MISSING  # the recipe's name: its preset in conf/model/
    hidden_sizes: list[int] = MISSING
    activation: str = "sigmoid"  # σ of the hidden units: engine/activations.py
    cost: str = "quadratic"  # C with its output units: engine/costs.py
    init: str = "normal"  # the initial weights: engine/network.py INITS


@dataclass
class TrainConfig(SGDConfig):
    """The SGD settings (pipeline/engine/sgd.py) plus the float type the network computes in."""

    dtype: str = "float32"
    keep: str = "final"  # final: the last epoch's weights (the book); best: the best val epoch's


@dataclass
class BaselineConfig:
    name: str = "none"
    # trained beside ours, each in a process of its own (the same runs, bit for bit); null:
    # when this process has 2 cores and the memory for both, and is no sweep job
    side_by_side: bool | None = None


@dataclass
class TrackingConfig:
    experiment: str = "${data.name}"  # each dataset its own experiment (mnist, digits)
    log_model: bool = True
    # Reuse a FINISHED run of the same config hash and model family instead of training
    # again (sweeps set it, so that a rerun resumes where a killed sweep stopped).
    skip_finished: bool = False
    parent_run_id: str | None = None  # set by a sweep job: its runs are the parent's children
    tags: dict[str, str] = field(default_factory=dict)  # extra tags on each training run
    label: str | None = None  # after the family in run names (a search's "trial 3")
    # the settings a sweep job varies (dotted keys, or ablation=<row>): its run names show
    # them first, so that the children of a sweep differ in their first characters
    varied: list[str] = field(default_factory=list)


@dataclass
class EvaluateConfig:
    run_ids: list[str] = field(default_factory=list)  # empty: the runs trained just before
    misclassified: int = 36  # digits in the grid of mistakes


@dataclass
class AnalyzeConfig:
    run_id: str | None = None  # default: the latest finished run of ours named model_name
    model_name: str = "classic"
    noise_images: int = 1000
    memorize_epochs: int = 30  # the run's own network on shuffled labels
    memorize_subset: int = 5000  # images the wide network memorises
    memorize_hidden: list[int] = field(default_factory=lambda: [512])
    memorize_wide_epochs: int = 60
    learning_rates: list[float] = field(default_factory=lambda: [0.05, 0.5, 3.0, 30.0, 300.0])
    lr_epochs: int = 15
    seeds: int = 5
    workers: int | None = None  # processes training side by side (None: one per core)


@dataclass
class RegisterConfig:
    run_id: str | None = None  # the run to register (make register RUN_ID=<id>)
    model_name: str | None = None  # default: <the run's dataset>-classifier
    alias: str = "champion"  # what make serve serves


@dataclass
class ReproduceConfig:
    run_id: str | None = None  # the training run to rerun (make reproduce RUN_ID=<id>)


@dataclass
class SweepSettings:
    """Per-activation settings a sweep preset may use (conf/sweep/grid.yaml): its configs
    interpolate ${sweep.init.<activation>} and ${sweep.eta.<activation>.<step>}."""

    step: str | None = None  # the learning-rate step the grid sweeps: low, mid, high
    init: dict[str, str] = field(default_factory=dict)  # activation -> init
    eta: dict[str, dict[str, float]] = field(default_factory=dict)  # activation -> step -> η


# Field metadata of the search's settings: how to run it, not what it searches (a study is
# the same whatever they are); set by the launcher for each worker process it starts.
HOW = {"how": True}
PER_WORKER = {"how": True, "per_worker": True}


@dataclass
class SearchConfig:
    """An Optuna study over the config space (stage search, conf/search/, stages/search.py)."""

    # the study ends with this many COMPLETE or PRUNED trials
    n_trials: int = field(default=30, metadata=HOW)
    # worker processes on this machine (other machines: the same command)
    workers: int = field(default=1, metadata=PER_WORKER)
    worker_index: int = field(default=0, metadata=PER_WORKER)  # seeds the worker's sampler
    # false for workers started by a search, which summarises itself
    summarize: bool = field(default=True, metadata=PER_WORKER)
    # default: <preset>-<key of space, overrides, code>
    study: str | None = field(default=None, metadata=PER_WORKER)
    sampler: str = "tpe"
    pruner: str = "median"
    pruner_startup_trials: int = 5  # trials that run to the end before any is pruned
    pruner_warmup_epochs: int = 3  # epochs of every trial before it may be pruned
    seed: int = 0
    # default: OPTUNA_STORAGE, else sqlite beside the MLflow store
    storage: str | None = field(default=None, metadata=PER_WORKER)
    # seconds without a heartbeat (one every 5 s): the worker is gone
    stale_after: int = field(default=30, metadata=HOW)
    # config key -> {low, high[, log]} or {choices: [...]}
    space: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    stages: list[str] = field(
        default_factory=lambda: ["download", "preprocess", "train", "evaluate"]
    )
    seed: int = 0  # the network's initial weights and every epoch's shuffle
    quiet: bool = False  # no progress bars (they are off anyway when not on a terminal)
    verbose: bool = False  # the libraries' INFO lines too (MLflow's, Optuna's, alembic's)
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = MISSING
    model: ModelConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    reproduce: ReproduceConfig = field(default_factory=ReproduceConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    sweep: SweepSettings = field(default_factory=SweepSettings)


ConfigStore.instance().store(name="base_config", node=Config)


# ---- the settings by role, read off the schema ------------------------------------------


def _dotted(prefix: str, schema: type, keep: Callable[[dataclasses.Field], bool]) -> list[str]:
    return [f"{prefix}.{f.name}" for f in dataclasses.fields(schema) if keep(f)]


def _is_tweak(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("tweak"))


# The settings that fix a run's data split.
SPLIT_KEYS = _dotted("data", DataConfig, lambda f: bool(f.metadata.get("split")))
# What a training run computes (its config hash): its seed, split, network and training.
COMPUTED_KEYS = ["seed", *SPLIT_KEYS, "model", "train"]
# The recipe: what a comparison of runs holds fixed or varies (a sweep's parent names it).
# The tweaks and the settings that apply only with another (step_every, gamma) are left
# out: a run names them when they are on (conditional_keys).
RECIPE_KEYS = [
    *_dotted("model", ModelConfig, lambda f: f.name != "name"),
    *_dotted("train", SGDConfig, lambda f: not f.metadata and f.name != "augment"),
    "seed",
]
# What a training run's params name: the recipe and how the network computes and what it
# keeps (train.dtype, train.keep: TrainConfig's own settings, beyond SGD's).
RUN_KEYS = [
    *RECIPE_KEYS,
    *_dotted("train", TrainConfig, lambda f: f.name not in SGDConfig.__dataclass_fields__),
]
# The tweaks, all off in the classic recipe (the engine marks them).
TWEAK_KEYS = _dotted("train", SGDConfig, _is_tweak) + _dotted(
    "train.augment", AugmentConfig, _is_tweak
)


def search_keys(role: str) -> list[str]:
    """search.* settings marked `role` (HOW: how to run a search; per_worker: set by the
    launcher for each of its workers)."""
    return _dotted("search", SearchConfig, lambda f: bool(f.metadata.get(role)))


def conditional_keys(cfg) -> list[str]:
    """The settings in use here beyond the recipe: each tweak that is on, and each setting
    that applies only when another has a value (step_every and gamma with schedule=step,
    elastic_sigma with elastic_alpha) when it does."""
    keys = [key for key in TWEAK_KEYS if OmegaConf.select(cfg, key)]
    for prefix, schema in (("train", SGDConfig), ("train.augment", AugmentConfig)):
        for f in dataclasses.fields(schema):
            if "applies_when" not in f.metadata:
                continue
            other, *wanted = f.metadata["applies_when"]
            value = OmegaConf.select(cfg, f"{prefix}.{other}")
            if (value == wanted[0]) if wanted else bool(value):
                keys.append(f"{prefix}.{f.name}")
    return keys


def plain(node: Any, resolve: bool = True) -> Any:
    """A config node as plain Python (dicts, lists, scalars); anything else as it is."""
    return OmegaConf.to_container(node, resolve=resolve) if OmegaConf.is_config(node) else node


# ---- declarative value constraints ------------------------------------------------------


def one_of(*choices) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in choices), f"one of {list(choices)}"


def greater_than(low) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v > low), f"a number > {low}"


def at_least(low) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"a number ≥ {low}"


def in_range(low, high) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: low <= v < high), f"a number in [{low}, {high})"


# Values that end up inside MLflow filter strings must be plain names or run ids.
SEED = in_range(0, 2**32)  # what numpy's and scikit-learn's RandomState accept
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
RUN_ID = (
    (lambda v: bool(_RUN_ID.match(str(v)))),
    "a run id: 32 hex digits, as the MLflow UI shows",
)
NAME = ((lambda v: bool(_NAME.match(str(v)))), "a name of letters, digits, '_', '.', '-'")


CONSTRAINTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "stages": ((lambda v: len(v) > 0), "a non-empty list of stages, e.g. [train,evaluate]"),
    "seed": SEED,
    "data.name": one_of(*DATASETS),
    "data.split_seed": SEED,
    "data.validation_size": at_least(1),
    "data.test_size": at_least(1),
    "data.label_shuffle": ((lambda v: 0 <= v <= 1), "a fraction in [0, 1]"),
    "model.hidden_sizes": (
        (lambda v: len(v) > 0 and all(int(n) >= 1 for n in v)),
        "a non-empty list of layer sizes ≥ 1, e.g. [16,16]",
    ),
    "model.activation": one_of(*ACTIVATIONS),
    "model.cost": one_of(*COSTS),
    "model.init": one_of(*INITS),
    "train.epochs": at_least(1),
    "train.batch_size": at_least(1),
    "train.learning_rate": greater_than(0),
    "train.momentum": in_range(0, 1),
    "train.l2": at_least(0),
    "train.schedule": one_of(*SCHEDULES),
    "train.step_every": at_least(1),
    "train.gamma": greater_than(0),
    "train.dtype": one_of("float32", "float64"),
    "train.keep": one_of("final", "best"),
    "train.warmup_epochs": at_least(0),
    "train.dropout_input": in_range(0, 1),
    "train.dropout_hidden": in_range(0, 1),
    "train.max_norm": at_least(0),
    "train.augment.shift": at_least(0),
    "train.augment.rotation": in_range(0, 180),
    "train.augment.scale": in_range(0, 1),
    "train.augment.shear": in_range(0, 80),
    "train.augment.elastic_alpha": at_least(0),
    "train.augment.elastic_sigma": greater_than(0),
    # read when checked: a family added to the table is a baseline at once
    "baseline.name": (
        (lambda v: v == "none" or (v in FAMILIES and v != OURS)),
        f"none or a family of pipeline/families/ other than {OURS}",
    ),
    "data.mirror_deadline": greater_than(0),
    "analyze.seeds": at_least(2),
    "analyze.noise_images": at_least(1),
    "analyze.memorize_subset": at_least(10),
    "analyze.model_name": NAME,
    "analyze.run_id": RUN_ID,
    "reproduce.run_id": RUN_ID,
    "register.run_id": RUN_ID,
    "register.model_name": NAME,
    "register.alias": NAME,
    "tracking.experiment": NAME,
    "search.n_trials": at_least(1),
    "search.workers": ((lambda v: 1 <= v <= 64), "a number of worker processes from 1 to 64"),
    "search.worker_index": at_least(0),
    "search.sampler": one_of("tpe", "random"),
    "search.pruner": one_of("median", "none"),
    "search.pruner_startup_trials": at_least(0),
    "search.pruner_warmup_epochs": at_least(0),
    "search.seed": SEED,
    "evaluate.misclassified": at_least(0),
    "search.study": NAME,
    "search.stale_after": at_least(10),
}


def validate(cfg, stages: dict) -> None:
    """Raise PipelineError naming every key whose value breaks its constraint, every key
    the schema does not know, and a network too large for this machine's memory; then,
    the settings being sound, check that the store's folder can be written."""
    problems = [
        f"{key}: not a setting (a typo? `python -m pipeline --help` lists them)"
        for key in unknown_keys(cfg)
    ]
    for key, (ok, accepts) in CONSTRAINTS.items():
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue  # a group this run does not use
        if not ok(value):
            shown = plain(value, resolve=False)
            problems.append(f"{key}={shown!r}: must be {accepts}")
    problems += [
        f"{key}={value}: must be a finite number"
        for key, value in _leaves(cfg)
        if isinstance(value, float) and not math.isfinite(value)
    ]
    problems += [
        f"evaluate.run_ids: {run_id!r} must be {RUN_ID[1]}"
        for run_id in cfg.evaluate.run_ids
        if not RUN_ID[0](run_id)
    ]
    unknown = [s for s in cfg.stages if s not in stages]
    if unknown:
        problems.append(f"stages: unknown stage(s) {unknown}; choose from {list(stages)}")
    if "evaluate" in cfg.stages and "train" in cfg.stages and not cfg.tracking.log_model:
        problems.append(
            "tracking.log_model=false: the evaluate stage loads the logged models; "
            "set tracking.log_model=true or drop evaluate from stages"
        )
    if "search" in cfg.stages:
        try:
            search_space(cfg)
        except PipelineError as e:
            problems.append(str(e))
    n_train = training_set_size(cfg.data) if cfg.get("data") else None
    if n_train is not None and n_train < 10:
        total = n_train + int(cfg.data.validation_size) + int(cfg.data.test_size or 0)
        problems.append(
            f"data.validation_size={cfg.data.validation_size}"
            + (f" with data.test_size={cfg.data.test_size}" if cfg.data.test_size else "")
            + f": must leave at least 10 of the {total} images for training"
        )
    elif n_train is not None and "train" in cfg.stages and cfg.train.batch_size > n_train:
        problems.append(
            f"train.batch_size={cfg.train.batch_size}: must be at most the "
            f"training set size ({n_train} images)"
        )
    if not problems and ({"train", "search"} & set(cfg.stages)):
        problems += memory_problems(cfg)
    if problems:
        raise PipelineError("invalid config:\n  " + "\n  ".join(problems))
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        check_writable(from_root(cfg.paths.mlruns_dir), "the MLflow store", "paths.mlruns_dir")


def unknown_keys(cfg, schema: type | None = None, prefix: str = "") -> list[str]:
    """Dotted keys of `cfg` that the schema (the Config dataclass) does not have. Hydra
    refuses most of them itself, but adds `+group.key=value`, and a typo there would be
    silently ignored (or reach a constructor as a traceback)."""
    schema = schema or Config
    types = typing.get_type_hints(schema)
    found = []
    for key in cfg:
        if key == "hydra":
            continue
        if key not in types:
            found.append(f"{prefix}{key}")
        elif dataclasses.is_dataclass(types[key]) and OmegaConf.is_dict(cfg._get_node(key)):
            found += unknown_keys(cfg._get_node(key), types[key], f"{prefix}{key}.")
    return found


def memory_problems(cfg) -> list[str]:
    """A network whose training would not fit in this machine's available memory, named
    before anything is allocated (numpy would fail half-way with a traceback, or the OOM
    killer end the run without a word)."""
    need = training_bytes(cfg)
    available = available_memory()
    if available is None or need <= 0.8 * available:
        return []
    sizes = [DATASETS[cfg.data.name]["pixels"], *cfg.model.hidden_sizes, N_CLASSES]
    n_params = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    return [
        f"model.hidden_sizes={list(cfg.model.hidden_sizes)}: a {'-'.join(map(str, sizes))} "
        f"network has {n_params:,} weights and biases; training it needs about "
        f"{need / 2**30:,.1f} GiB of memory and this machine has {available / 2**30:.1f} GiB "
        "available. Use smaller hidden layers"
    ]


def training_bytes(cfg) -> int:
    """A lower bound on what training needs: for ours, the weights, their gradient, the
    momentum velocity and the kept best copy in the network's float type, plus the
    activations of a 10,000-row evaluation chunk; scikit-learn's baseline keeps its
    weights, gradients and velocities in float64."""
    sizes = [DATASETS[cfg.data.name]["pixels"], *cfg.model.hidden_sizes, N_CLASSES]
    n_params = sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    itemsize = 8 if cfg.train.dtype == "float64" else 4
    activations = 10000 * sum(sizes) * itemsize * 2
    ours = n_params * itemsize * 4 + activations
    theirs = n_params * 8 * 3 + activations * 2 if cfg.baseline.name == "sklearn_mlp" else 0
    return max(ours, theirs)  # the families train one after the other


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _leaves(cfg, prefix: str = ""):
    """(dotted key, value) for every leaf of the config."""
    for key, value in plain(cfg).items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield f"{prefix}{key}[{i}]", item
        else:
            yield f"{prefix}{key}", value


def training_set_size(data_cfg) -> int | None:
    """Images left for training once the validation (and, for digits, test) split is out."""
    if data_cfg.name not in DATASETS:
        return None
    return (
        DATASETS[data_cfg.name]["images"]
        - int(data_cfg.validation_size)
        - int(data_cfg.test_size or 0)
    )


# ---- Hydra's own refusals, as one line -------------------------------------------------


def override_error(error: Exception, argv: list[str] | None = None) -> str:
    """One line for an override Hydra refused before the app ran: a group given something
    that is not one of its presets, an unknown key, a value of the wrong type."""
    for arg in sys.argv[1:] if argv is None else argv:
        key, _, value = arg.lstrip("+~").partition("=")
        group = PROJECT_ROOT / "conf" / key
        if group.is_dir() and "," not in value:
            presets = sorted(p.stem for p in group.glob("*.yaml") if not p.stem.startswith("_"))
            if value not in presets and value != "null":
                return (
                    f"{arg}: {key} takes the name of a preset in conf/{key}/: {', '.join(presets)}"
                )
    lines = []
    for part in (error, error.__cause__):
        if part is None:
            continue
        for line in str(part).splitlines():
            line = line.strip()
            if line and not line.startswith(
                ("full_key:", "object_type", "reference_type", "To append to your config")
            ):
                lines.append(line.rstrip("."))
                break
    if (
        match := re.search(r"Ambiguous value for argument '([^'=]+)=([^']*)'", str(error))
    ) and "," in match[2]:
        # a,b is Hydra's sweep syntax; a list is written [a,b] (quoted for the shell)
        return (
            f"{match[1]}={match[2]}: a list is written in brackets: '{match[1]}=[{match[2]}]' "
            f"(a,b alone asks for a sweep over a and b: add --multirun)"
        )
    cause = str(error.__cause__ or "")
    if match := re.match(r"Key '([^']+)' (is )?not in", cause):
        full_key = getattr(error.__cause__, "full_key", None) or match[1]
        lines = [f"{full_key}: not a setting (a typo?)"]
    return "; ".join(dict.fromkeys(lines)) + " (`python -m pipeline --help` lists the settings)"


_ABSENT = object()


def search_space(cfg) -> dict[str, dict]:
    """search.space checked against the config: each key a setting of the config, each
    entry a range {low, high[, log]} (typed as the setting: int or float) or {choices}."""
    space: dict[str, Any] = plain(cfg.search.space)
    if not space:
        raise PipelineError(
            "search.space: empty; name the settings to search, e.g. "
            "search.space={train.learning_rate:{low:0.01,high:3.0,log:true}}"
        )
    checked: dict[str, dict] = {}
    problems: list[str] = []
    for key, spec in space.items():
        where = f"search.space.{key}"
        current = OmegaConf.select(cfg, key, default=_ABSENT)
        if current is _ABSENT or key.startswith(("search", "hydra", "paths", "tracking", "stages")):
            problems.append(
                f"{where}: not a setting a trial can vary (e.g. train.learning_rate, "
                "model.hidden_sizes)"
            )
        elif not isinstance(spec, dict):
            problems.append(f"{where}={spec!r}: must be {{low, high[, log]}} or {{choices: [...]}}")
        elif "choices" in spec:
            if (
                not isinstance(spec["choices"], list)
                or not spec["choices"]
                or set(spec) != {"choices"}
            ):
                problems.append(f"{where}: choices must be a non-empty list, alone")
            else:
                checked[key] = spec
        elif {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
            kind = "int" if isinstance(current, int) and not isinstance(current, bool) else "float"
            low, high = spec["low"], spec["high"]
            numbers = all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)
            )
            if (
                not numbers
                or not low < high
                or (kind == "int" and not (low == int(low) and high == int(high)))
            ):
                problems.append(f"{where}: low < high, {kind}s (the setting is {kind})")
            elif spec.get("log") and low <= 0:
                problems.append(f"{where}: a log range needs low > 0")
            else:
                checked[key] = {**spec, "type": kind}
        else:
            problems.append(f"{where}={spec!r}: must be {{low, high[, log]}} or {{choices: [...]}}")
    if problems:
        raise PipelineError("; ".join(problems))
    return checked
