"""Classifier-free guidance, label mixes and label dropout."""

import functools
import json

import numpy as np
import pytest

from cln_textgen.backend import tf
from cln_textgen.data.batching import drop_labels
from cln_textgen.errors import UserError
from cln_textgen.generation.conditions import contrast, label_ids
from cln_textgen.generation.decoder import CachedDecoder
from cln_textgen.generation.engine import Context, DecodeState, params_of
from cln_textgen.generation.generate import GenerationOptions, generate
from cln_textgen.generation.processors import Guidance
from cln_textgen.model.modeling import ModelConfig, build_model
from test_decoding import TOKENIZER, decode_steps, full_logits, plain_decoding

LABELS = ["a", "b", "c"]


@functools.lru_cache(maxsize=None)
def null_model():
    """A 2-layer model of 3 labels plus the null condition, every weight random."""
    config = ModelConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32, max_position=48,
                         num_labels=3, label_embedding_size=8, label_dropout=0.1,
                         dropout=0.0, attention_dropout=0.0)
    model = build_model(config)
    rng = np.random.default_rng(4)
    for weight in model.weights:
        values = rng.normal(0, 0.3, weight.shape) + weight.name.endswith("gamma:0")
        weight.assign(values.astype(np.float32))
    return model, config


def gen(labels, **call):
    """``generate`` on the null model, without XLA (fast to compile)."""
    model, _ = null_model()
    return generate(model, TOKENIZER, labels, decoding=plain_decoding(model), **call)


def log_softmax(x):
    x = np.asarray(x, np.float64)
    return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1,
                                                                                           keepdims=True))


def guide(logits, guidance):
    """The guidance processor on ``(2 r, vocab)`` logits: ``r`` guided rows,
    then their contrast rows; returns the guided rows' scores."""
    rows = int(logits.shape[0]) // 2
    partner = list(range(rows, 2 * rows)) + list(range(rows))
    state = DecodeState(
        scores=None, short=None, history=None, length=None, prompt_length=None,
        done=tf.zeros(2 * rows, tf.bool), last=None, partner=tf.constant(partner),
        row_id=tf.range(rows), params=params_of([GenerationOptions(guidance=guidance)] * rows),
        norms=None, cache=None)
    return Guidance()(logits, state, Context(3, None))


def test_guide_on_hand_made_logits():
    rng = np.random.default_rng(0)
    label, other = rng.normal(0, 3, (2, 5, 11))
    logits = tf.constant(np.concatenate([label, other]), tf.float32)
    # guidance 1 is the label's own distribution, 0 the contrast's
    np.testing.assert_allclose(guide(logits, 1.0).numpy(), log_softmax(label), atol=1e-6)
    np.testing.assert_allclose(guide(logits, 0.0).numpy(), log_softmax(other), atol=1e-6)
    # --negative-label: log p_label + (g - 1) (log p_label - log p_other)
    for g in (1.5, 3.0):
        expected = log_softmax(label) + (g - 1) * (log_softmax(label) - log_softmax(other))
        np.testing.assert_allclose(guide(logits, g).numpy(), expected, atol=1e-5)


def test_cached_guided_logits_equal_the_full_model_at_every_step():
    model, config = null_model()
    null, g = config.null_id, 2.5
    prompts = [[2], [2, 7, 9], [2, 5]]
    labels = [0, 1, 2]
    # The contrast rows are fed what their rows are fed: the same prompts, the same seed.
    for logits, sequences in decode_steps(CachedDecoder(model), prompts * 2,
                                          labels + [null] * 3, 5, copies=2):
        guided = guide(logits, g).numpy()
        for row, label in enumerate(labels):
            assert sequences[row] == sequences[row + 3]
            full = log_softmax(full_logits(model, sequences[row], label))
            free = log_softmax(full_logits(model, sequences[row], null))
            np.testing.assert_allclose(guided[row], free + g * (full - free), atol=1e-4)


def test_guidance_zero_generates_what_the_null_condition_generates():
    model, config = null_model()
    options = GenerationOptions(max_new_tokens=8, seed=3)
    guided = gen([0, 1], n=3, contrast=config.null_id,
                      options=GenerationOptions(max_new_tokens=8, seed=3, guidance=0.0))
    free = gen([config.null_id] * 2, n=3, options=options)
    assert [g.token_ids for g in guided] == [f.token_ids for f in free]


def test_guided_greedy_equals_a_full_recompute_and_changes_the_text():
    model, config = null_model()
    g = 3.0
    out = gen([0, 2], prompt="", contrast=config.null_id,
                   options=GenerationOptions(max_new_tokens=6, greedy=True, guidance=g))
    banned = [i for i in TOKENIZER.special_ids if i != TOKENIZER.sep_id]
    for result, label in zip(out, [0, 2]):
        ids, expected = [TOKENIZER.cls_id], []
        for _ in range(6):
            full = log_softmax(full_logits(model, ids, label))
            free = log_softmax(full_logits(model, ids, config.null_id))
            scores = free + g * (full - free)
            scores[banned] = -np.inf
            token = int(scores.argmax())
            if token == TOKENIZER.sep_id:
                break
            expected.append(token)
            ids.append(token)
        assert result.token_ids == expected
    plain = gen([0, 2], options=GenerationOptions(max_new_tokens=6,
                                                                          greedy=True))
    assert [p.token_ids for p in plain] != [r.token_ids for r in out]


@pytest.mark.parametrize("options", [dict(top_k=5), dict(top_p=0.8), dict(num_beams=2),
                                     dict(repetition_penalty=1.3, no_repeat_ngram=2)])
def test_guidance_works_with_every_sampler_and_chunking(options):
    model, config = null_model()
    call = dict(max_new_tokens=7, guidance=2.0, seed=5, **options)
    n = 2
    whole = gen([0, 1], n=n, prompt="很好", contrast=config.null_id,
                     options=GenerationOptions(**call))
    chunked = gen([0, 1], n=n, prompt="很好", contrast=config.null_id,
                       options=GenerationOptions(**call, batch_size=2))
    assert [w.token_ids for w in whole] == [c.token_ids for c in chunked]
    assert all(w.text.startswith("很好") for w in whole)


def test_streamed_guided_text_joins_to_the_result():
    model, config = null_model()
    pieces = {}
    out = gen([1], n=2, contrast=config.null_id,
                   options=GenerationOptions(max_new_tokens=8, guidance=2.0, seed=1),
                   stream=lambda row, piece: pieces.setdefault(row, []).append(piece))
    for row, result in enumerate(out):
        assert "".join(p for p in pieces[row] if p is not None) == result.text


def test_a_mix_conditions_on_the_weighted_embedding():
    model, config = null_model()
    prompts = [[2, 7, 9]] * 3
    conditions = [1, ((1, 1.0),), ((0, 0.25), (2, 0.75))]
    logits, _ = next(decode_steps(CachedDecoder(model), prompts, conditions, 0))
    # weight 1 on one label is that label, exactly
    np.testing.assert_array_equal(logits[0].numpy(), logits[1].numpy())
    # a mix equals a model whose label embedding holds the mixed row
    mixed = build_model(config)
    mixed.set_weights(model.get_weights())
    table = mixed.get_layer("Label-Embedding").embeddings
    rows = table.numpy()
    rows[1] = 0.25 * rows[0] + 0.75 * rows[2]
    table.assign(rows)
    np.testing.assert_allclose(logits[2].numpy(), full_logits(mixed, [2, 7, 9], 1), atol=1e-5)


def test_mixes_are_checked_and_named():
    assert label_ids(LABELS, "a=0.7,c=0.3") == [((0, 0.7), (2, 0.3))]
    assert label_ids(LABELS, {"b": 0.5, "a": 0.5}) == [((0, 0.5), (1, 0.5))]
    assert label_ids(LABELS, ["a", "b=1"]) == [0, ((1, 1.0),)]
    for bad, message in [("a=0.7,d=0.3", "unknown label 'd'"),
                         ("a=0.7,b=0.2", "sum to 0.9, not 1"),
                         ("a=1.5,b=-0.5", "must be a number >= 0"),
                         ({"a": True}, "must be a number >= 0"),
                         ("a=0.5,a=0.5", "names 'a' twice"),
                         ("a=x", "is not NAME=WEIGHT"),
                         ({}, "names no label")]:
        with pytest.raises(UserError, match=message):
            label_ids(LABELS, bad)


def test_the_contrast_of_guidance():
    assert contrast(LABELS, 3, 1.0) is None
    assert contrast(LABELS, 3, 2.0) == 3
    assert contrast(LABELS, None, 2.0, "c") == 2
    with pytest.raises(UserError, match="needs a null condition.*negative_label"):
        contrast(LABELS, None, 2.0)
    with pytest.raises(UserError, match="only matters with guidance"):
        contrast(LABELS, 3, 1.0, "b")
    with pytest.raises(UserError, match="unknown label 'z'"):
        contrast(LABELS, 3, 2.0, "z")


def test_label_dropout_drops_the_configured_share_of_rows_by_seed():
    labels = np.arange(20000) % 3
    dropped = drop_labels(labels, 0.1, 3, seed=0, step=7)
    share = np.mean(dropped == 3)
    assert 0.09 < share < 0.11
    assert np.array_equal(dropped[dropped != 3], labels[dropped != 3])
    assert np.array_equal(dropped, drop_labels(labels, 0.1, 3, seed=0, step=7))
    assert not np.array_equal(dropped, drop_labels(labels, 0.1, 3, seed=0, step=8))
    assert not np.array_equal(dropped, drop_labels(labels, 0.1, 3, seed=0, step=7, micro=1))
    assert not np.any(drop_labels(labels, 0.0, 3, seed=0, step=7) == 3)


@pytest.mark.parametrize("args, message", [
    (["--label", "0", "--guidance", "-1"], "--guidance: must be >= 0 (1.0: off), got -1.0"),
    (["--label", "0=0.5,1=0.4"], "the weights sum to 0.9, not 1"),
    (["--label", "0=0.5,x=0.5"], "unknown label 'x'"),
    (["--label", "0", "--negative-label", "1"], "only matters with guidance"),
    (["--label", "0", "--guidance", "2", "--negative-label", "x"], "unknown label 'x'"),
])
def test_bad_guidance_and_mixes_are_one_line(trained_run, capsys, args, message):
    from cln_textgen.cli import main

    assert main(["generate", "--run", str(trained_run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_guidance_in_the_config_needs_label_dropout_and_a_conditional_model(trained_run, capsys):
    from cln_textgen.cli import main

    config = str(trained_run.parent / "config.yaml")
    assert main(["train", "--config", config, "--set", "model.label_dropout=0",
                 "--set", "generate.guidance=2", "--set", "run_dir=unused"]) == 2
    err = capsys.readouterr().err
    assert "generate.guidance: 2 needs the null condition that model.label_dropout" in err
    assert main(["train", "--config", config, "--set", "model.conditional=false",
                 "--set", "generate.guidance=2", "--set", "run_dir=unused"]) == 2
    err = capsys.readouterr().err
    assert "generate.guidance: 2 guides by the label" in err and "set generate.guidance to 1" in err


def test_the_test_run_trains_with_label_dropout(trained_run):
    # label dropout is on by default, so the resume tests on this run cover it
    model = json.loads((trained_run / "model.json").read_text(encoding="utf-8"))
    assert model["label_dropout"] == 0.1 and model["num_labels"] == 2
