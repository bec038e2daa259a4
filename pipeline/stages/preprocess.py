"""Stage `preprocess`: raw images to the verified arrays a run trains on (data/dataset.py):
rows of floats in [0, 1], a stratified validation split, a cache keyed by its inputs."""

from __future__ import annotations

from pathlib import Path

from pipeline.data import dataset


def run(cfg, results: dict) -> Path:
    return dataset.prepare(cfg.data)
