import numpy as np
import pytest

from cln_textgen import ConditionalLayerNormalization
from cln_textgen.backend import keras, tf
from cln_textgen.model.layers import SeededTruncatedNormal


def reference(x, cond, gamma, beta, eps, hidden=None, gamma_w=None, beta_w=None):
    """The CLN formula in float64 numpy."""
    x = x.astype(np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    normed = (x - mean) / np.sqrt(var + eps)
    if cond is None:
        return normed * gamma + beta
    c = cond if hidden is None else cond @ hidden
    g = gamma + (c @ gamma_w)[:, None, :]
    b = beta + (c @ beta_w)[:, None, :]
    return normed * g + b


def randomise(layer, rng):
    for w in layer.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))


@pytest.mark.parametrize("hidden_units", [None, 6])
def test_conditional_matches_numpy_reference(hidden_units):
    rng = np.random.default_rng(0)
    x = rng.normal(2, 3, (3, 5, 8)).astype(np.float32)
    cond = rng.normal(0, 1, (3, 4)).astype(np.float32)
    layer = ConditionalLayerNormalization(conditional=True, hidden_units=hidden_units)
    layer([x, cond])
    randomise(layer, rng)
    gamma = layer.gamma.numpy()
    beta = layer.beta.numpy()
    hidden = layer.hidden_dense.kernel.numpy() if hidden_units else None
    expected = reference(x, cond, gamma, beta, 1e-12, hidden,
                         layer.gamma_dense.kernel.numpy(), layer.beta_dense.kernel.numpy())
    np.testing.assert_allclose(layer([x, cond]).numpy(), expected, atol=2e-5, rtol=1e-5)
    assert len(layer.weights) == (5 if hidden_units else 4)


def test_unconditional_matches_numpy_reference():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 2, (2, 3, 6)).astype(np.float32)
    layer = ConditionalLayerNormalization(epsilon=1e-5)
    layer(x)
    randomise(layer, rng)
    expected = reference(x, None, layer.gamma.numpy(), layer.beta.numpy(), 1e-5)
    np.testing.assert_allclose(layer(x).numpy(), expected, atol=1e-5, rtol=1e-5)


def test_condition_starts_at_zero_effect():
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, (2, 4, 8)).astype(np.float32)
    cond = rng.normal(0, 1, (2, 3)).astype(np.float32)
    conditional = ConditionalLayerNormalization(conditional=True, hidden_units=5)
    plain = ConditionalLayerNormalization()
    np.testing.assert_array_equal(conditional([x, cond]).numpy(), plain(x).numpy())


def test_weights_order_and_shapes():
    layer = ConditionalLayerNormalization(conditional=True, hidden_units=3)
    out = layer([tf.zeros((2, 5, 8)), tf.zeros((2, 4))])
    assert out.shape == (2, 5, 8)
    assert layer.compute_output_shape([(2, 5, 8), (2, 4)]) == (2, 5, 8)
    # beta then gamma first: a checkpoint mapping [beta, gamma] loads by position
    assert [w.name.split(":")[0].split("/")[-1] for w in layer.trainable_weights[:2]] == ["beta", "gamma"]


def test_center_and_scale_off():
    x = np.random.default_rng(3).normal(0, 1, (1, 2, 4)).astype(np.float32)
    layer = ConditionalLayerNormalization(center=False, scale=False)
    out = layer(x).numpy()
    assert layer.weights == []
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-6)


def test_config_round_trip():
    layer = ConditionalLayerNormalization(conditional=True, hidden_units=7, epsilon=1e-6,
                                          hidden_activation="relu",
                                          hidden_initializer=SeededTruncatedNormal(0.02, 5),
                                          name="cln")
    config = layer.get_config()
    clone = ConditionalLayerNormalization.from_config(config)
    assert clone.get_config() == config
    assert config["epsilon"] == 1e-6 and config["hidden_units"] == 7
    assert ConditionalLayerNormalization().epsilon == 1e-12
    serialized = keras.layers.serialize(layer)
    assert keras.layers.deserialize(serialized).get_config() == config


def test_save_and_load_weights_give_equal_outputs(tmp_path):
    rng = np.random.default_rng(4)
    x = keras.Input((None, 8))
    c = keras.Input((4,))
    y = ConditionalLayerNormalization(conditional=True, hidden_units=6, name="cln")([x, c])
    model = keras.Model([x, c], y)
    randomise(model.get_layer("cln"), rng)
    inputs = [rng.normal(0, 1, (2, 3, 8)).astype(np.float32), rng.normal(0, 1, (2, 4)).astype(np.float32)]
    model.save_weights(str(tmp_path / "w.weights.h5"))
    clone = keras.Model.from_config(model.get_config())
    clone.load_weights(str(tmp_path / "w.weights.h5"))
    np.testing.assert_array_equal(model(inputs).numpy(), clone(inputs).numpy())


def test_seeded_initializer_is_distinct_and_reproducible():
    first = SeededTruncatedNormal(0.02, seed=3)
    a, b = first((4, 4)).numpy(), first((4, 4)).numpy()
    assert not np.array_equal(a, b)
    again = SeededTruncatedNormal(0.02, seed=3)
    np.testing.assert_array_equal(again((4, 4)).numpy(), a)
    assert not np.array_equal(SeededTruncatedNormal(0.02, seed=4)((4, 4)).numpy(), a)
    assert np.abs(a).max() <= 0.04 + 1e-7  # truncated at two standard deviations
