"""The model families a training run can be, behind one interface (base.Family), in one
table, trained by one loop (training.train): this project's NumPy network and, as the
reference, scikit-learn's MLPClassifier on the same config and split.

Adding a family is a module that defines `FAMILY` (a base.Family) and a row below; the
config then accepts it as `baseline.name`. A family is imported when it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.families.base import Family

OURS = "numpy_mlp"
FAMILIES = {  # name (tag model_family) -> module defining FAMILY
    "numpy_mlp": "pipeline.families.numpy_mlp",
    "sklearn_mlp": "pipeline.families.sklearn_mlp",
}


def get(name: str) -> Family:
    return importlib.import_module(FAMILIES[name]).FAMILY
