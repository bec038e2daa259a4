"""The import rules of docs/architecture.md, read off the code: each layer of pipeline/
imports only the layers below it, and no stage imports another."""

from __future__ import annotations

import ast
from pathlib import Path

from pipeline.paths import PROJECT_ROOT

# Each layer and what it may import besides itself (docs/architecture.md). The helpers at
# the foot (errors, logs, paths, interrupts) serve every layer above the engine.
FOOT = {"errors", "logs", "paths", "interrupts", "progress"}
BELOW_STAGES = {"foot", "engine", "data", "config", "tracking", "families"}
MAY_IMPORT = {
    "engine": set(),  # numpy and scipy only: test_network checks what it loads
    "foot": {"engine"},  # errors.py maps the engine's exceptions
    "data": {"foot"},
    "config": {"foot", "engine", "data", "families table"},
    "tracking": {"foot", "engine", "data", "config"},
    "families": {"foot", "engine", "data", "config", "tracking"},
    "stages": BELOW_STAGES,
    "serve": BELOW_STAGES,
    "app": BELOW_STAGES | {"stages", "serve"},
}


def layer(module: str) -> str:
    """The layer of a module of the package, e.g. pipeline.tracking.runs -> tracking."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in ("app", "__main__", "usage"):
        return "app"
    if parts == ["families"]:  # the table of families (names and modules), nothing more
        return "families table"
    return "foot" if parts[0] in FOOT else parts[0]


def imported(path: Path, root: Path) -> set[str]:
    """The modules of the package that a file imports anywhere in it (at the top or in a
    function), relative imports resolved."""
    parts = path.relative_to(root).with_suffix("").parts
    package = ".".join(parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}".rstrip(".")
            for alias in node.names:  # `from pipeline import config`: a module, not a name
                sub = root / f"{base}.{alias.name}".replace(".", "/")
                module = sub.with_suffix(".py").exists() or sub.is_dir()
                found.add(f"{base}.{alias.name}" if module else base)
    return {name for name in found if name.startswith("pipeline.")}


def broken_rules(root: Path) -> list[str]:
    """Every import in root/pipeline that the rules forbid, as 'importer (layer) imports
    module (layer)'."""
    broken = []
    for path in sorted((root / "pipeline").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        importer = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mine = layer(importer).replace("families table", "families")
        allowed = MAY_IMPORT[mine]
        for name in sorted(imported(path, root)):
            theirs = layer(name)
            if theirs == "families table" and "families table" not in allowed:
                theirs = "families"  # the table is part of families for all but config
            another_stage = theirs == mine == "stages" and importer != "pipeline.stages"
            if another_stage or (theirs != mine and theirs not in allowed):
                broken.append(f"{importer} ({mine}) imports {name} ({theirs})")
    return broken


def test_each_layer_imports_only_the_layers_below_it_and_no_stage_another():
    broken = broken_rules(PROJECT_ROOT)
    assert not broken, "imports that break docs/architecture.md:\n" + "\n".join(broken)


def test_the_check_finds_a_forbidden_import_even_inside_a_function(tmp_path):
    for name, source in {
        "pipeline/__init__.py": "",
        "pipeline/serve/__init__.py": "",
        "pipeline/serve/ui.py": "",
        "pipeline/stages/__init__.py": "",
        "pipeline/stages/train.py": "def run():\n    from pipeline.serve import ui\n",
        "pipeline/stages/evaluate.py": "from . import train\n",
        "pipeline/engine/__init__.py": "from pipeline.errors import PipelineError\n",
        "pipeline/errors.py": "",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(source)
    assert broken_rules(tmp_path) == [
        "pipeline.engine (engine) imports pipeline.errors (foot)",
        "pipeline.stages.evaluate (stages) imports pipeline.stages.train (stages)",
        "pipeline.stages.train (stages) imports pipeline.serve.ui (serve)",
    ]
