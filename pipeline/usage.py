"""`python -m pipeline --help`: the stages, the presets, every setting with its default, and
the make targets, read from the STAGES table, conf/, the schema and the Makefile — without
composing a config or importing a stage, so it answers at once."""

from __future__ import annotations

import dataclasses
import re
import shutil
import textwrap
import typing

from omegaconf import MISSING

from pipeline import config
from pipeline.paths import PROJECT_ROOT
from pipeline.stages import STAGES

GROUPS = ("data", "model", "baseline", "sweep", "search")
# A make target with its `## what it does` comment line(s) right above it.
_MAKE_TARGET = re.compile(r"((?:^## .*\n)+)^([a-z][a-z-]*):", re.MULTILINE)


def make_targets() -> list[tuple[str, str]]:
    """(target, the first line of its ## comment) for every commented target of the
    Makefile (what `make help` prints too)."""
    makefile = PROJECT_ROOT / "Makefile"
    if not makefile.exists():
        return []
    return [
        (target, comment.splitlines()[0][3:].strip())
        for comment, target in _MAKE_TARGET.findall(makefile.read_text())
    ]


def presets(group: str) -> list[str]:
    return sorted(
        p.stem for p in (PROJECT_ROOT / "conf" / group).glob("*.yaml") if not p.stem.startswith("_")
    )


def defaults() -> dict[str, str]:
    """The default preset of each group, from conf/config.yaml's defaults list."""
    text = (PROJECT_ROOT / "conf" / "config.yaml").read_text()
    return dict(re.findall(r"^\s+- (\w+): (\w+)", text, re.MULTILINE))


def settings(schema: type, prefix: str = "") -> list[str]:
    """'key=default' for every leaf setting of a schema dataclass, nested ones flattened."""
    found = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            found += settings(hints[f.name], f"{key}.")
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = MISSING
        if isinstance(value, list):
            value = f"[{','.join(map(str, value))}]"
        shown = "(preset)" if value == MISSING else str(value).replace(" ", "")
        found.append(f"{key}={'null' if value is None else shown}")
    return found


def text(width: int | None = None) -> str:
    width = width or min(shutil.get_terminal_size((100, 24)).columns, 100)

    def wrap(words: list[str], indent: str) -> str:
        return textwrap.fill(
            "  ".join(words), width, initial_indent=indent, subsequent_indent=indent
        )

    chosen = defaults()
    lines = [
        "usage: python -m pipeline [key=value ...] [group=preset ...]",
        '       (make run ARGS="..." runs the same; -m key=a,b or sweep=<preset>: a multirun)',
        "",
        "Trains the classic 784-16-16-10 network in NumPy next to scikit-learn's MLPClassifier",
        "on MNIST, every run tracked in MLflow (mlruns/, or MLFLOW_TRACKING_URI).",
        "",
        f"stages (stages=[...], in order; default [{','.join(config.Config().stages)}]):",
        *(f"  {name:<11} {what}" for name, what in STAGES.items()),
        "",
        "presets (group=preset; conf/<group>/):",
        *(
            f"  {group + '=':<10} "
            + " | ".join(f"{p} (default)" if chosen.get(group) == p else p for p in presets(group))
            for group in GROUPS
        ),
        "",
        "settings (key=value; the defaults, before a preset's changes; pipeline/config.py):",
    ]
    every = settings(config.Config)
    for section in dict.fromkeys(s.split(".")[0] for s in every if "." in s.split("=")[0]):
        lines.append(wrap([s for s in every if s.startswith(f"{section}.")], "  "))
    lines.append(wrap([s for s in every if "." not in s.split("=")[0]], "  "))
    lines += [
        "",
        "examples:",
        "  python -m pipeline data=digits                      the whole pipeline in seconds",
        "  python -m pipeline model=modern train.epochs=10     another recipe, fewer epochs",
        "  python -m pipeline sweep=smoke                      a tracked sweep (make sweep)",
        "  python -m pipeline stages=[compare] quiet=true      ours vs scikit-learn, no bars",
        "",
        "make targets (make help):",
        *(f"  make {target:<14} {what}" for target, what in make_targets()),
        "",
        "Hydra's own options: python -m pipeline --hydra-help",
    ]
    return "\n".join(lines)
