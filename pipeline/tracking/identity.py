"""What identifies a run: its config (config_hash), its code and lock (resume_key), its
commit; and a logged run's config read back over today's schema."""

from __future__ import annotations

import hashlib
import json
import subprocess

import mlflow
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from pipeline.config import COMPUTED_KEYS, Config, plain
from pipeline.errors import PipelineError
from pipeline.paths import PROJECT_ROOT
from pipeline.tracking.environment import lock_digest


def config_hash(cfg) -> str:
    """A short hash of what a training run computes (seed included, paths excluded)."""
    picked = {
        key: plain(v) for key in COMPUTED_KEYS if (v := OmegaConf.select(cfg, key)) is not None
    }
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def code_digest() -> str:
    """SHA-256 over the pipeline's code (every .py file of the package) and the lock file."""
    code = hashlib.sha256()
    for source in sorted((PROJECT_ROOT / "pipeline").rglob("*.py")):
        code.update(source.relative_to(PROJECT_ROOT).as_posix().encode())
        code.update(source.read_bytes())
    return hashlib.sha256(f"{code.hexdigest()}|{lock_digest()}".encode()).hexdigest()[:16]


def resume_key(cfg) -> str:
    """config_hash plus what else decides a run's numbers: the code and the locked package
    versions. A rerun after a code change or a new lock trains again instead of reusing
    the old results."""
    return hashlib.sha256(f"{config_hash(cfg)}|{code_digest()}".encode()).hexdigest()[:16]


def logged_config(cfg, run_id: str):
    """A run's logged config.yaml over the current schema (so settings added since have
    their defaults), with this machine's paths (cfg's) for its data."""
    logged = OmegaConf.create(mlflow.artifacts.load_text(f"runs:/{run_id}/config.yaml"))
    try:
        run_cfg = OmegaConf.merge(OmegaConf.structured(Config), logged)
    except (ConfigKeyError, ValidationError) as e:  # a setting dropped, renamed or retyped since
        commit = mlflow.MlflowClient().get_run(run_id).data.tags.get("git_commit", "unknown")
        dirty = " (its tree had uncommitted changes too)" if commit.endswith("-dirty") else ""
        raise PipelineError(
            f"run {run_id} was logged with {e.full_key}="
            f"{OmegaConf.select(logged, str(e.full_key))!r}, "
            f"a setting this code does not know or types differently (dropped, renamed or "
            f"changed since). Rerun it on the code that logged it: git checkout "
            f"{commit.removesuffix('-dirty')}{dirty}"
        ) from None
    run_cfg.paths.data_dir = str(cfg.paths.data_dir)
    run_cfg.paths.mlruns_dir = str(cfg.paths.mlruns_dir)
    run_cfg.data.processed_dir = f"{cfg.paths.data_dir}/processed"
    if run_cfg.data.get("raw_dir"):
        run_cfg.data.raw_dir = f"{cfg.paths.data_dir}/raw/{run_cfg.data.name}"
    return run_cfg


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=PROJECT_ROOT,
            text=True,
            capture_output=True,
            timeout=10,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            text=True,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
