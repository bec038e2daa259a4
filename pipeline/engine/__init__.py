"""The NumPy engine: the network, its activations and costs, and mini-batch SGD.

It stands alone: it imports numpy and scipy and nothing else, of the pipeline or beyond
(no Hydra, MLflow or pandas; threadpoolctl only if it is installed, to train on one BLAS
thread), so a logged model ships this folder and nothing more.
"""

from .activations import ACTIVATIONS
from .augment import AugmentConfig
from .costs import COSTS
from .errors import DivergenceError, EngineError
from .network import INITS, Network
from .sgd import SCHEDULES, SGDConfig, train

__all__ = [
    "ACTIVATIONS",
    "AugmentConfig",
    "COSTS",
    "INITS",
    "SCHEDULES",
    "DivergenceError",
    "EngineError",
    "Network",
    "SGDConfig",
    "train",
]
