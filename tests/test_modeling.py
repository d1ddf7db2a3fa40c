import itertools

import numpy as np
import pytest

from cln_textgen.backend import bert4keras, keras
from cln_textgen.model.layers import ConditionalLayerNormalization
from cln_textgen.model.bert_weights import load_bert_weights
from cln_textgen.model.modeling import ModelConfig, build_model, conditional_layers, model_parts
from cln_textgen.model.pretrained import open_pretrained
from cln_textgen.tasks.lm_start import model_config_for
from cln_textgen.config import Config

TOKENS = np.array([[2, 5, 6, 7, 8, 9, 3], [2, 10, 11, 3, 0, 0, 0]], dtype=np.int32)


def tiny_config(**changes):
    values = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position=32, num_labels=3, label_embedding_size=8)
    values.update(changes)
    return ModelConfig(**values)


def loaded(config, variables, mlm=True):
    model = build_model(config)
    assert load_bert_weights(model, variables, "test") == mlm
    return model


def test_every_layernorm_is_conditional():
    for layers in (1, 3):
        model = build_model(tiny_config(num_hidden_layers=layers))
        norms = conditional_layers(model)
        assert len(norms) == 2 * layers + 2  # 2 per layer + embedding norm + MLM norm
        assert all(n.conditional for n in norms)
        plain = [l for l in model.layers if isinstance(l, (keras.layers.LayerNormalization,
                                                          bert4keras.layers.LayerNormalization))
                 and not isinstance(l, ConditionalLayerNormalization)]
        assert plain == []


@pytest.mark.parametrize("changes", [{}, {"cond_hidden_units": 4}, {"conditional": False},
                                     {"num_hidden_layers": 3}])
def test_the_model_parts_hold_every_weight_exactly_once(changes):
    # The cached decoder and the train step see the model only through its
    # parts: a weight the parts miss (a renamed or new bert4keras layer)
    # would silently drop out of decoding.
    model = build_model(tiny_config(**changes))
    parts = model_parts(model)
    seen = [id(w) for w in parts.weights()]
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(id(w) for w in model.weights)
    assert len(parts.blocks) == changes.get("num_hidden_layers", 2)
    assert parts.norms() == conditional_layers(model)  # every norm, in model order
    assert (parts.vocab_size, parts.max_position) == (40, 32)


def test_a_missing_layer_names_the_accessor():
    model = build_model(tiny_config())
    # The model without its output bias: what a renamed layer looks like to the accessor.
    inner = keras.Model(model.inputs, model.get_layer("MLM-Norm").output)
    with pytest.raises(RuntimeError, match="model_parts"):
        model_parts(inner)


def test_unconditional_model_has_no_label_embedding():
    model = build_model(tiny_config(conditional=False))
    assert not any(n.conditional for n in conditional_layers(model))
    assert "Label-Embedding" not in [l.name for l in model.layers]


def test_at_initialisation_every_label_gives_the_pretrained_logits(tiny_google_bert):
    _, variables = tiny_google_bert
    config = tiny_config(cond_hidden_units=4)
    conditional = loaded(config, variables)
    plain = loaded(tiny_config(conditional=False), variables)
    reference = plain.predict([TOKENS, np.zeros(2, np.int32)], verbose=0)
    for label in range(config.num_labels):
        labels = np.full(2, label, np.int32)
        out = conditional.predict([TOKENS, labels], verbose=0)
        # Equal to float32 rounding: gamma + 0 broadcast per row takes other
        # kernels than gamma itself (a few ulps of logits up to ~3).
        np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-6)
    # and the condition does act once its projections are non-zero
    norm = conditional.get_layer("Transformer-0-FeedForward-Norm")
    norm.gamma_dense.kernel.assign(np.full(norm.gamma_dense.kernel.shape, 0.5, np.float32))
    a = conditional.predict([TOKENS, np.zeros(2, np.int32)], verbose=0)
    b = conditional.predict([TOKENS, np.ones(2, np.int32)], verbose=0)
    assert np.abs(a - b).max() > 1e-3


def test_plain_model_equals_bert4keras_lm(tiny_google_bert):
    directory, variables = tiny_google_bert
    plain = loaded(tiny_config(conditional=False), variables)
    reference = bert4keras.models.build_transformer_model(
        str(directory / "bert_config.json"), str(directory / "bert_model.ckpt"),
        application="lm", with_mlm="linear")
    expected = reference.predict([TOKENS, np.zeros_like(TOKENS)], verbose=0)
    out = plain.predict([TOKENS, np.zeros(2, np.int32)], verbose=0)
    # padding positions differ (bert4keras masks them differently); compare real tokens
    real = TOKENS != 0
    assert np.abs(out - expected)[real].max() <= 1e-5


def test_new_weights_are_seeded_and_distinct(tiny_google_bert):
    """MLM head (absent here), label embedding and condition projections: no two equal."""
    _, variables = tiny_google_bert
    without_mlm = {k: v for k, v in variables.items() if not k.startswith("cls/")}
    config = tiny_config(cond_hidden_units=4, seed=7)
    model = loaded(config, without_mlm, mlm=False)
    drawn = [model.get_layer("Label-Embedding").embeddings, model.get_layer("MLM-Dense").kernel]
    drawn += [n.hidden_dense.kernel for n in conditional_layers(model)]
    values = [w.numpy() for w in drawn]
    assert all(np.abs(v).max() > 0 for v in values)
    for a, b in itertools.combinations(values, 2):
        assert a.shape != b.shape or not np.array_equal(a, b)
    # the projections that add to gamma and beta stay exactly zero
    for norm in conditional_layers(model):
        assert not norm.gamma_dense.kernel.numpy().any() and not norm.beta_dense.kernel.numpy().any()
    # same seed -> same draws; another seed -> others
    again = loaded(config, without_mlm, mlm=False)
    np.testing.assert_array_equal(again.get_layer("MLM-Dense").kernel.numpy(), values[1])
    other = loaded(tiny_config(cond_hidden_units=4, seed=8), without_mlm, mlm=False)
    assert not np.array_equal(other.get_layer("MLM-Dense").kernel.numpy(), values[1])


def test_from_scratch_kernels_do_not_repeat():
    model = build_model(tiny_config())
    kernels = [w.numpy() for w in model.weights if "kernel" in w.name or "embeddings" in w.name]
    kernels = [k for k in kernels if k.any()]
    for a, b in itertools.combinations(kernels, 2):
        assert a.shape != b.shape or not np.array_equal(a, b)


def test_model_config_round_trip_rebuilds_the_same_model(tmp_path, tiny_google_bert):
    _, variables = tiny_google_bert
    config = tiny_config(cond_hidden_units=4, dropout=0.0, attention_dropout=0.0)
    config.save(tmp_path / "model.json")
    again = ModelConfig.load(tmp_path / "model.json")
    assert again == config
    a, b = loaded(config, variables), build_model(again)
    b.set_weights(a.get_weights())
    labels = np.array([0, 2], np.int32)
    np.testing.assert_array_equal(a.predict([TOKENS, labels], verbose=0),
                                  b.predict([TOKENS, labels], verbose=0))


def test_model_config_from_pretrained_and_run_config(tiny_google_bert):
    directory, _ = tiny_google_bert
    pretrained = open_pretrained(directory)
    config = Config()
    config.model.label_embedding_size = 12
    config.model.dropout = 0.2
    mc = model_config_for(pretrained.config, config, num_labels=4, vocab_size=30)
    assert (mc.hidden_size, mc.num_hidden_layers, mc.max_position) == (16, 2, 32)
    assert (mc.num_labels, mc.label_embedding_size, mc.vocab_size) == (4, 12, 30)
    assert mc.dropout == mc.attention_dropout == 0.2


def test_dropout_masks_follow_the_seed_counter():
    config = tiny_config(dropout=0.5, attention_dropout=0.5)
    from cln_textgen.model.layers import DropoutSeed

    seed = DropoutSeed(3)
    model = build_model(config, seed)
    labels = np.zeros(2, np.int32)
    first = model([TOKENS, labels], training=True).numpy()
    again = model([TOKENS, labels], training=True).numpy()
    np.testing.assert_array_equal(first, again)  # same counter -> same masks
    seed.variable.assign_add([0, 1])
    assert not np.array_equal(model([TOKENS, labels], training=True).numpy(), first)
    inference = model([TOKENS, labels], training=False).numpy()
    assert not np.array_equal(inference, first)


def test_unsupported_activation():
    with pytest.raises(ValueError, match="hidden_act"):
        build_model(tiny_config(hidden_act="swish"))
