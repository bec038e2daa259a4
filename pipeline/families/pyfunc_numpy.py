"""The trained network as an MLflow pyfunc model: 784-pixel rows in, digits out.

Logged as "models from code": MLflow stores this file, the network's .npz and the engine
(pipeline/engine, numpy and scipy only) and rebuilds the model from them, so nothing is
pickled and loading needs nothing of the pipeline (no Hydra, pandas or scikit-learn).
Input it was not trained for (wrong width, NaN, values outside [0, 1]) is refused: a
served model answers HTTP 400 with the reason.
"""

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from pipeline.engine.inputs import InputError, check_output, check_pixels
from pipeline.engine.network import Network


class DigitClassifier(PythonModel):
    def load_context(self, context):
        self.net = Network.load(context.artifacts["network"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        """The predicted digit (brightest output neuron) for each row of pixels in [0, 1];
        with params {"output": "probabilities"}, each digit's probability (the cost's
        reading of the output activations aᴸ: softmax, or aᴸ normalised to sum to 1)."""
        try:
            x = check_pixels(model_input, self.net.sizes[0], self.net.dtype)
            output = check_output(params)
        except InputError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return self.net.predict_proba(x) if output == "probabilities" else self.net.predict(x)


set_model(DigitClassifier())
