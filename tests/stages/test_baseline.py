"""The scikit-learn baseline is the same experiment as ours: step for step, shuffle by shuffle."""

import numpy as np
import pytest
import sklearn.neural_network._multilayer_perceptron as sk_mlp
from mlflow.tracking import MlflowClient
from sklearn.neural_network import MLPClassifier

from pipeline.app import run_stages
from pipeline.data import dataset
from pipeline.engine import Network, SGDConfig, train
from pipeline.families import sklearn_mlp as baseline


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_an_epoch_of_ours_equals_mlpclassifier_step_for_step(activation):
    """Same weights, batches (our shuffle handed to it), η, momentum and L2 at alpha = λ·m/n:
    after three SGD steps, every weight and bias agrees to rounding."""
    rng = np.random.default_rng(5)
    n, m, eta, mu, l2 = 24, 8, 0.3, 0.9, 2.0
    x = rng.random((n, 7))
    y = np.arange(n) % 10
    net = Network([7, 6, 5, 10], activation, "cross_entropy", "glorot", "float64", rng=rng)
    # sklearn's weights: created by a first call, then overwritten with ours (in place: its
    # optimizer holds references), its momentum reset to zero like ours at the start.
    clf = MLPClassifier(
        hidden_layer_sizes=(6, 5),
        activation=baseline.SKLEARN_ACTIVATION[activation],
        solver="sgd",
        learning_rate_init=eta,
        momentum=mu,
        nesterovs_momentum=False,
        batch_size=m,
        alpha=baseline.equivalent_alpha(l2, m, n),
        shuffle=False,
    )
    clf.partial_fit(x[:m], y[:m], classes=np.arange(10))
    for ours, theirs in zip(net.weights + net.biases, clf.coefs_ + clf.intercepts_):
        theirs[...] = ours
    clf._optimizer.velocities = [np.zeros_like(v) for v in clf._optimizer.velocities]
    before = net.params.copy()

    order = np.random.default_rng(11).permutation(n)  # the shuffle our epoch will draw
    train(
        net,
        x,
        y,
        SGDConfig(epochs=1, batch_size=m, learning_rate=eta, momentum=mu, l2=l2),
        np.random.default_rng(11),
        evaluate=False,
    )
    clf.partial_fit(x[order], y[order])  # one epoch of n/m = 3 steps, in our order

    assert not np.allclose(net.params, before)  # the steps did move the weights
    for l, (w, b) in enumerate(zip(net.weights, net.biases)):
        np.testing.assert_allclose(clf.coefs_[l], w, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(clf.intercepts_[l], b, rtol=1e-10, atol=1e-13)


def test_alpha_maps_our_l2_to_the_same_decay_per_step():
    # ours: η·λ/n per step; MLPClassifier: η·alpha/m per step
    assert baseline.equivalent_alpha(5.0, 10, 50000) == pytest.approx(5.0 * 10 / 50000)
    assert baseline.equivalent_alpha(0.0, 10, 50000) == 0.0


def test_a_3_epoch_run_with_l2_logs_the_mapped_alpha_and_shuffles_afresh_every_epoch(
    make_cfg, tmp_path, monkeypatch
):
    permutations = []
    real_shuffle = sk_mlp.shuffle

    def recording_shuffle(*arrays, **kwargs):
        out = real_shuffle(*arrays, **kwargs)
        permutations.append(np.array(out, copy=True))
        return out

    monkeypatch.setattr(sk_mlp, "shuffle", recording_shuffle)
    # (λ=0.5: at λ=5 the classic net's weights decay to a constant output on 1,197 images)
    cfg = make_cfg(
        "data=digits",
        "train.epochs=3",
        "train.l2=0.5",
        "train.batch_size=10",
        "stages=[preprocess,train]",
        "tracking.log_model=false",
        "baseline.side_by_side=false",  # trained here, where the shuffles are recorded
    )
    run_stages(cfg)
    n_train = len(dataset.load(cfg.data).y("train"))

    assert len(permutations) == 3
    assert all(sorted(p) == list(range(n_train)) for p in permutations)
    assert len({p.tobytes() for p in permutations}) == 3, "an epoch replayed an earlier shuffle"

    client = MlflowClient()
    experiment = client.get_experiment_by_name("digits")
    (run,) = client.search_runs([experiment.experiment_id], "tags.model_family = 'sklearn_mlp'")
    params = run.data.params
    assert float(params["sklearn.alpha"]) == pytest.approx(0.5 * 10 / n_train)
    assert params["sklearn.batch_size"] == "10" and params["sklearn.shuffle"] == "True"
    assert params["sklearn.random_state"] == "RandomState(0)"
    assert params["sklearn.nesterovs_momentum"] == "False" and params["sklearn.solver"] == "sgd"
