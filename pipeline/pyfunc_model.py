"""The trained network as an MLflow pyfunc model: 784-pixel rows in, digits out.

Logged as "models from code": MLflow stores this file, the network's .npz and the engine
(pipeline/engine, numpy and scipy only) and rebuilds the model from them, so nothing is
pickled and loading needs nothing of the pipeline (no Hydra, pandas or scikit-learn).
"""

import mlflow
import numpy as np

from pipeline.engine.network import Network


class DigitClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        self.net = Network.load(context.artifacts["network"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        """The predicted digit (brightest output neuron) for each row of pixels in [0, 1]."""
        return self.net.predict(np.asarray(model_input, dtype=self.net.dtype))


mlflow.models.set_model(DigitClassifier())
