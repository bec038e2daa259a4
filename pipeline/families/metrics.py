"""One set of metric definitions for every model family: the same name, the same quantity.

Both families hand over class probabilities for a whole split (ours: Network.predict_proba,
scikit-learn: MLPClassifier.predict_proba) and get the same metrics back, computed by
`sklearn.metrics` on the same rows:

    <split>_accuracy   fraction of the split classified correctly (argmax of the probabilities)
    <split>_log_loss   mean −ln p(true class), no weight penalty (sklearn.metrics.log_loss)

for split = train (the whole training split, after the epoch), val and test. Each family's
own training objective is not comparable across families, so it has its own name:

    train_cost     ours: Nielsen's C, the configured cost (quadratic or cross-entropy) over
                   the whole training split plus the L2 penalty λ/2n Σ w² (what SGD minimises)
    sklearn_loss   scikit-learn: MLPClassifier.loss_curve_, the running mean over the
                   epoch's mini-batches of log loss plus its penalty, as it trains
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, log_loss

from pipeline.errors import CollapseError


def classification_metrics(
    split: str, probabilities: np.ndarray, y: np.ndarray
) -> dict[str, float]:
    """{split}_accuracy and {split}_log_loss of class probabilities against labels y."""
    p = np.asarray(probabilities, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 only within ~1e-7
    return {
        f"{split}_accuracy": float(accuracy_score(y, p.argmax(axis=1))),
        f"{split}_log_loss": float(log_loss(y, p, labels=np.arange(p.shape[1]))),
    }


def collapsed(probabilities: np.ndarray, y: np.ndarray) -> bool:
    """Has a model collapsed to chance? It then gives (nearly) one answer to every input —
    dead ReLUs or saturated sigmoids after an absurd η — and scores near 1/10. Both must
    hold, so a model that is merely early in training is not flagged."""
    predicted = np.asarray(probabilities).argmax(axis=1)
    top_share = np.bincount(predicted).max() / len(predicted)
    return bool(top_share >= 0.95 and np.mean(predicted == y) < 0.2)


def check_not_collapsed(train_cfg, probabilities: np.ndarray, y: np.ndarray) -> None:
    """Raise CollapseError if the model trained by `train_cfg` answers (nearly) one digit
    to everything."""
    if collapsed(probabilities, y):
        raise CollapseError(
            f"training collapsed to chance: validation accuracy "
            f"{np.mean(np.argmax(probabilities, axis=1) == y):.4f}, one digit predicted for "
            f"≥95% of the images, after {train_cfg.epochs} epochs at "
            f"η={train_cfg.learning_rate}. "
            "Lower train.learning_rate (or change the init)."
        )
