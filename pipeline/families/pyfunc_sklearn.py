"""scikit-learn's MLPClassifier (the baseline) as an MLflow pyfunc model: pixel rows in,
digits out, with the same input check as ours (pipeline/engine/inputs.py).

Logged as "models from code": the estimator is stored with skops, which loads only the
types it is told to trust (never a pickle), and this file rebuilds the model from it.
"""

import numpy as np
import skops.io
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from pipeline.engine.inputs import InputError, check_output, check_pixels

# skops refuses every type it is not told to trust; these are the optimizer's.
TRUSTED_TYPES = [
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
]


class SklearnDigitClassifier(PythonModel):
    def load_context(self, context):
        self.clf = skops.io.load(context.artifacts["estimator"], trusted=TRUSTED_TYPES)

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        """The digit MLPClassifier predicts for each row of pixels in [0, 1]; with params
        {"output": "probabilities"}, its predict_proba (softmax of the output layer)."""
        try:
            x = check_pixels(model_input, self.clf.n_features_in_)
            output = check_output(params)
        except InputError as e:
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return self.clf.predict_proba(x) if output == "probabilities" else self.clf.predict(x)


set_model(SklearnDigitClassifier())
