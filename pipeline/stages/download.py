"""Stage `download`: the four canonical MNIST files, verified, in the raw-data cache
(data/download.py: mirrors in order, MD5 checked, a per-mirror deadline)."""

from __future__ import annotations

from pathlib import Path

from pipeline.data import download


def run(cfg, results: dict) -> dict[str, Path]:
    return download.fetch_all(cfg.data)
