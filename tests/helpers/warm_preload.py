"""What the warm fork server (helpers/warm.py) imports once: the app with every stage and
what they import when they run. Imported in that server only, never by a test."""

# ruff: noqa: F401
import hydra_plugins.hydra_joblib_launcher.joblib_launcher
import matplotlib.pyplot
import mlflow
import mlflow.data.numpy_dataset
import mlflow.pyfunc
import mlflow.store.db.utils
import mlflow.store.model_registry.sqlalchemy_store
import mlflow.store.tracking.sqlalchemy_store
import optuna
import pandas
import sklearn.datasets
import sklearn.metrics
import sklearn.model_selection
import sklearn.neural_network
import skops.io

import pipeline.app
import pipeline.families.numpy_mlp
import pipeline.families.sklearn_mlp
import pipeline.stages.analyze
import pipeline.stages.compare
import pipeline.stages.download
import pipeline.stages.evaluate
import pipeline.stages.preprocess
import pipeline.stages.register
import pipeline.stages.reproduce
import pipeline.stages.search
import pipeline.stages.sweep
import pipeline.stages.train
import pipeline.tracking.store
