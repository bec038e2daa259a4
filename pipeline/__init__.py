"""The classic handwritten-digit network, from scratch in NumPy, as a tracked pipeline."""

# Registers the config schema with Hydra, so that composing conf/config.yaml works from any
# entry point that imports the package (the app, tests, benchmarks).
from pipeline import config as _config  # noqa: F401
