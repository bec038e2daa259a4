import itertools

import numpy as np
import pytest

from pipeline.data import dataset
from pipeline.engine import ACTIVATIONS, COSTS, INITS, DivergenceError, Network, SGDConfig, train


def test_the_classic_network_has_13002_weights_and_biases():
    net = Network([784, 16, 16, 10])
    assert net.n_params == 13002
    assert [w.shape for w in net.weights] == [(784, 16), (16, 16), (16, 10)]
    assert [b.shape for b in net.biases] == [(16,), (16,), (10,)]
    # weights and biases are views of the one flat parameter array
    net.params[:] = 7
    assert all((w == 7).all() for w in net.weights) and all((b == 7).all() for b in net.biases)


def _numeric_gradient(net, x, y, l2, n, h=1e-6):
    """Central differences of the total cost C(params), one parameter at a time."""
    grad = np.empty_like(net.params)
    for i in range(net.n_params):
        old = net.params[i]
        net.params[i] = old + h
        c_plus = net.evaluate(x, y, l2, n)[0]
        net.params[i] = old - h
        c_minus = net.evaluate(x, y, l2, n)[0]
        net.params[i] = old
        grad[i] = (c_plus - c_minus) / (2 * h)
    return grad


@pytest.mark.parametrize(
    "activation,cost,l2",
    [(a, c, l2) for a, c in itertools.product(ACTIVATIONS, COSTS) for l2 in (0.0, 0.8)],
)
def test_backprop_matches_finite_differences(activation, cost, l2):
    rng = np.random.default_rng(42)
    net = Network([6, 5, 4, 3], activation, cost, "scaled", dtype="float64", rng=rng)
    x = rng.random((8, 6))
    y = rng.integers(0, 3, 8)
    if activation == "relu":  # keep z away from the kink, where the derivative is undefined
        x += 0.1
    analytic = net.gradient(x, y, l2=l2, n=25)
    numeric = _numeric_gradient(net, x, y, l2, 25)
    rel = np.linalg.norm(analytic - numeric) / np.linalg.norm(analytic + numeric)
    assert rel < 1e-6, f"relative error {rel:.2e}"
    assert np.abs(analytic).max() > 1e-3  # a gradient of zeros would also "agree"


@pytest.mark.parametrize("init", INITS)
def test_init_scales(init):
    net = Network([400, 300, 10], init=init, dtype="float64", rng=np.random.default_rng(0))
    expected = {"normal": 1.0, "scaled": 1 / 400, "he": 2 / 400, "glorot": 2 / 700}[init]
    assert net.weights[0].var() == pytest.approx(expected, rel=0.05)


def _digits(make_cfg):
    cfg = make_cfg("data=digits")
    dataset.prepare(cfg.data)
    return dataset.load(cfg.data)


def _fit(data, seed=0, **kw):
    rng = np.random.default_rng(seed)
    net = Network(
        kw.pop("sizes", [64, 32, 10]),
        kw.pop("activation", "sigmoid"),
        kw.pop("cost", "quadratic"),
        kw.pop("init", "normal"),
        kw.pop("dtype", "float32"),
        rng=rng,
    )
    config = SGDConfig(**{"epochs": 20, "batch_size": 10, "learning_rate": 1.0, **kw})
    history = train(
        net,
        data.x("train"),
        data.y("train"),
        config,
        rng,
        validation=(data.x("val"), data.y("val")),
    )
    return net, history


def test_classic_setup_learns_the_8x8_digits(make_cfg):
    data = _digits(make_cfg)
    net, history = _fit(data)
    assert np.mean(net.predict(data.x("test")) == data.y("test")) >= 0.90
    assert history[-1]["train_cost"] < history[0]["train_cost"] / 2
    assert {
        "epoch",
        "learning_rate",
        "epoch_seconds",
        "train_cost",
        "train_accuracy",
        "val_accuracy",
    } <= set(history[-1])


@pytest.mark.parametrize(
    "options",
    [
        dict(activation="relu", cost="cross_entropy", init="he", learning_rate=0.1),
        dict(
            activation="tanh", cost="cross_entropy", init="glorot", learning_rate=0.1, momentum=0.9
        ),
        dict(
            cost="quadratic",
            init="scaled",
            learning_rate=1.0,
            l2=1.0,
            schedule="cosine",
            dtype="float64",
        ),
    ],
)
def test_variants_learn_the_8x8_digits(make_cfg, options):
    data = _digits(make_cfg)
    net, _ = _fit(data, **options)
    assert np.mean(net.predict(data.x("test")) == data.y("test")) >= 0.90


def test_same_seed_gives_bit_identical_weights_and_metrics(make_cfg):
    data = _digits(make_cfg)
    (a, ha), (b, hb) = _fit(data, seed=3, epochs=3), _fit(data, seed=3, epochs=3)
    np.testing.assert_array_equal(a.params, b.params)
    strip = lambda h: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in h]
    assert strip(ha) == strip(hb)
    c, _ = _fit(data, seed=4, epochs=3)
    assert not np.array_equal(a.params, c.params)


def _plain_sgd(net, x, y, eta, m, orders):
    """The reference for train(): Nielsen's mini-batch SGD written plainly, with separate
    biases, a fresh array for every intermediate and one batch at a time from the data, no
    chunks, workspaces or columns of ones. Sigmoid/quadratic or ReLU/softmax-cross-entropy."""
    W, b = [w.astype(np.float64) for w in net.weights], [c.astype(np.float64) for c in net.biases]
    sigmoid = lambda z: 1 / (1 + np.exp(-z))
    for order in orders:  # one permutation per epoch
        for k in range(0, len(y), m):
            idx = order[k : k + m]
            activations, target = [x[idx]], np.eye(W[-1].shape[1])[y[idx]]
            for l in range(len(W)):
                z = activations[-1] @ W[l] + b[l]
                if l < len(W) - 1:
                    activations.append(
                        sigmoid(z) if net.activation == "sigmoid" else np.maximum(z, 0)
                    )
                elif net.cost == "quadratic":
                    activations.append(sigmoid(z))
                else:
                    e = np.exp(z - z.max(axis=1, keepdims=True))
                    activations.append(e / e.sum(axis=1, keepdims=True))
            a = activations[-1]
            delta = (a - target) * a * (1 - a) if net.cost == "quadratic" else a - target
            for l in range(len(W) - 1, -1, -1):
                nabla_w, nabla_b = activations[l].T @ delta, delta.sum(axis=0)
                if l:
                    a = activations[l]
                    delta = (delta @ W[l].T) * (
                        a * (1 - a) if net.activation == "sigmoid" else a > 0
                    )
                W[l] -= eta / len(idx) * nabla_w
                b[l] -= eta / len(idx) * nabla_b
    return W, b


@pytest.mark.parametrize(
    "activation,cost,init", [("sigmoid", "quadratic", "normal"), ("relu", "cross_entropy", "he")]
)
def test_the_engines_sgd_is_the_plain_textbook_loop(activation, cost, init):
    """train() gathers chunks of rows, keeps [a, 1] buffers, writes in place: none of it may
    change the arithmetic. 600 rows in batches of 7 span full chunks, a partial chunk and a
    last batch of 5."""
    rng = np.random.default_rng(0)
    x, y = rng.random((600, 30)), rng.integers(0, 4, 600)
    net = Network([30, 9, 8, 4], activation, cost, init, dtype="float64", rng=rng)
    draws = np.random.default_rng(1)
    orders = [draws.permutation(600) for _ in range(2)]  # the only draws train() makes here
    W, b = _plain_sgd(net, x, y, 0.5, 7, orders)
    train(
        net,
        x,
        y,
        SGDConfig(epochs=2, batch_size=7, learning_rate=0.5),
        np.random.default_rng(1),
        evaluate=False,
    )
    for ours, plain in zip(net.weights + net.biases, W + b):
        np.testing.assert_allclose(ours, plain, rtol=1e-9, atol=1e-12)
    assert not np.allclose(
        W[0],
        Network(
            [30, 9, 8, 4], activation, cost, init, dtype="float64", rng=np.random.default_rng(0)
        ).weights[0],
    )  # it learned


def test_l2_shrinks_the_weights(make_cfg):
    data = _digits(make_cfg)
    plain, _ = _fit(data, epochs=5)
    decayed, _ = _fit(data, epochs=5, l2=50.0)
    norm = lambda net: sum(float((w**2).sum()) for w in net.weights)
    assert norm(decayed) < 0.5 * norm(plain)


def test_schedules():
    step = SGDConfig(epochs=30, learning_rate=2.0, schedule="step", step_every=10, gamma=0.5)
    assert [step.eta(e) for e in (0, 9, 10, 25)] == [2.0, 2.0, 1.0, 0.5]
    cosine = SGDConfig(epochs=10, learning_rate=2.0, schedule="cosine")
    assert cosine.eta(0) == 2.0 and cosine.eta(5) == pytest.approx(1.0)
    assert SGDConfig(learning_rate=2.0).eta(29) == 2.0


def test_an_absurd_learning_rate_raises_divergence_naming_epoch_and_rate(make_cfg):
    data = _digits(make_cfg)
    # (sigmoid units saturate rather than overflow: they never diverge, whatever η)
    with pytest.raises(DivergenceError, match=r"epoch 1 at learning rate η=1e\+20"):
        _fit(data, activation="relu", cost="cross_entropy", init="he", learning_rate=1e20)


def test_save_load_gives_identical_predictions(make_cfg, tmp_path):
    data = _digits(make_cfg)
    net, _ = _fit(data, epochs=2, activation="tanh", cost="cross_entropy")
    net.save(tmp_path / "net.npz")
    loaded = Network.load(tmp_path / "net.npz")
    assert (loaded.sizes, loaded.activation, loaded.cost) == ([64, 32, 10], "tanh", "cross_entropy")
    np.testing.assert_array_equal(
        loaded.feedforward(data.x("test")), net.feedforward(data.x("test"))
    )
    with np.load(tmp_path / "net.npz", allow_pickle=False) as f:  # no pickled objects inside
        assert sorted(f.files) == ["activation", "cost", "init", "params", "sizes"]


def test_bad_hyperparameters_are_named():
    with pytest.raises(Exception, match="activation='softplus' is unknown"):
        Network([4, 3], activation="softplus")


def test_the_engine_stands_alone_on_numpy_and_scipy():
    """Importing the engine loads nothing of the pipeline or of Hydra, MLflow, pandas,
    scikit-learn: a logged model ships it and only it."""
    import subprocess
    import sys

    from pipeline.paths import PROJECT_ROOT

    code = "import sys, pipeline.engine; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    ).stdout
    loaded = set(eval(out))
    assert {"numpy", "scipy", "pipeline"} <= loaded
    # (threadpoolctl, if installed, holds training to one BLAS thread; it is optional)
    assert not loaded & {"hydra", "omegaconf", "mlflow", "pandas", "sklearn", "yaml"}
    engine = PROJECT_ROOT / "pipeline" / "engine"
    for source in engine.glob("*.py"):  # relative imports only: it ships as a folder
        assert "from pipeline" not in source.read_text(), source.name


def test_one_factory_builds_the_network_from_plain_config_data():
    spec = {
        "name": "classic",
        "hidden_sizes": [16, 16],
        "activation": "sigmoid",
        "cost": "quadratic",
        "init": "normal",
    }
    net = Network.from_spec(spec, 784, rng=np.random.default_rng(0))
    assert net.sizes == [784, 16, 16, 10] and net.n_params == 13002
    same = Network(
        [784, 16, 16, 10], "sigmoid", "quadratic", "normal", rng=np.random.default_rng(0)
    )
    np.testing.assert_array_equal(net.params, same.params)
    assert net.spec == {k: v for k, v in spec.items() if k != "name"}


def test_class_probabilities_are_rows_summing_to_one_even_when_outputs_underflow():
    from pipeline.engine.costs import Quadratic

    a = np.array([[0.2, 0.6, 0.2], [0.0, 0.0, 0.0]], dtype=np.float32)
    p = Quadratic.probabilities(a)
    np.testing.assert_allclose(p, [[0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)


def test_activations_are_every_layer_and_end_with_the_feedforward_output():
    net = Network([12, 5, 4, 3], "relu", "cross_entropy", "he", "float64")
    x = np.random.default_rng(1).random((6, 12))
    layers = net.activations(x)
    assert [a.shape for a in layers] == [(6, 12), (6, 5), (6, 4), (6, 3)]
    np.testing.assert_array_equal(layers[0], x)
    z1 = x @ net.weights[0] + net.biases[0]
    np.testing.assert_allclose(layers[1], np.maximum(z1, 0))  # a¹ = σ(z¹), ReLU here
    np.testing.assert_array_equal(layers[-1], net.feedforward(x))
    np.testing.assert_allclose(layers[-1].sum(axis=1), 1)  # softmax outputs
