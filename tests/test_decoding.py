"""The cached decoder against the full model, and generate() against the oracle."""

import functools

import numpy as np
import pytest

import bert_fixtures as bf
from cln_textgen.backend import keras, tf
from cln_textgen.errors import UserError
from cln_textgen.generation.decoder import CachedDecoder, condition_weights, right_pad
from cln_textgen.generation.engine import Row, loop
from cln_textgen.generation.generate import Decoding, GenerationOptions, generate
from cln_textgen.model.modeling import ModelConfig, build_model
from cln_textgen.model.tokenization import TextTokenizer
from reference import reference_generate

TOKENIZER = TextTokenizer({token: i for i, token in enumerate(bf.vocab_tokens(40))})


@functools.lru_cache(maxsize=None)
def tiny_model(conditional=True, cond_hidden_units=None, policy="float32"):
    """A 2-layer model with every weight random: the condition projections
    start at zero and LayerNorms at 1/0, which would hide label and norm bugs."""
    config = ModelConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=32, max_position=48,
                         num_labels=3, label_embedding_size=8, conditional=conditional,
                         cond_hidden_units=cond_hidden_units, dropout=0.0, attention_dropout=0.0)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    rng = np.random.default_rng(0)
    for weight in model.weights:
        values = rng.normal(0, 0.3, weight.shape)
        if weight.name.endswith("gamma:0"):
            values += 1.0
        weight.assign(values.astype(np.float32))
    return model


@functools.lru_cache(maxsize=None)
def plain_decoding(model):
    """Without XLA: compiling for every batch shape would make the tests slow;
    the XLA step has tests of its own."""
    return Decoding(model, jit_compile=False)


def plain_decoder(model):
    return plain_decoding(model).decoder


def full_logits(model, ids, label):
    return model([np.array([ids], np.int32), np.array([label], np.int32)])[0, -1].numpy()


def decode_steps(decoder, prompts, labels, steps, seed=1, copies=1):
    """Run ``prompts`` through the cached decoder, then feed ``steps`` random
    tokens per row; yields ``(logits, sequences)`` before every feed.  With
    ``copies``, the rows are that many copies of a first block, fed alike."""
    rng = np.random.default_rng(seed)
    tokens, lengths = right_pad(prompts, 0)
    norms = decoder.norms(tf.constant(decoder.condition_weights(labels)))
    cache = decoder.empty_cache(len(prompts), 32)
    logits, cache = decoder.prefill(tf.constant(tokens), tf.constant(lengths), norms, cache)
    sequences = [list(p) for p in prompts]
    for _ in range(steps):
        yield logits, sequences
        new = np.tile(rng.integers(5, 40, len(prompts) // copies), copies).astype(np.int32)
        columns = np.array([len(s) for s in sequences], np.int32)
        for row, token in enumerate(new):
            sequences[row].append(int(token))
        logits, cache = decoder.step(tf.constant(new), tf.constant(columns), norms, cache)
    yield logits, sequences


@pytest.mark.parametrize("conditional, hidden", [(True, None), (True, 8), (False, None)])
def test_cached_logits_equal_the_full_model_at_every_step(conditional, hidden):
    model = tiny_model(conditional, hidden)
    decoder = CachedDecoder(model)
    prompts = [[2], [2, 7, 9], [2, 5], [2, 11, 12, 13]]  # right padding of 3, 1, 2, 0
    labels = [0, 1, 2, 1]
    for logits, sequences in decode_steps(decoder, prompts, labels, 6):
        for row, label in enumerate(labels):
            expected = full_logits(model, sequences[row], label)
            np.testing.assert_allclose(logits[row].numpy(), expected, rtol=0, atol=1e-5)
    if conditional:  # the labels matter, so the comparison above could fail
        assert not np.allclose(full_logits(model, [2], 0), full_logits(model, [2], 1), atol=1e-3)


def test_the_compiled_step_equals_the_full_model():
    model = tiny_model()
    decoder = CachedDecoder(model)
    step = tf.function(decoder.step, jit_compile=True)
    tokens, lengths = right_pad([[2, 7], [2]], 0)
    norms = decoder.norms(tf.constant(condition_weights([1, 0], 3)))
    cache = decoder.empty_cache(2, 16)
    _, cache = decoder.prefill(tf.constant(tokens), tf.constant(lengths), norms, cache)
    logits, _ = step(tf.constant([9, 9]), tf.constant([2, 1]), norms, cache)
    np.testing.assert_allclose(logits[0].numpy(), full_logits(model, [2, 7, 9], 1), atol=1e-5)
    np.testing.assert_allclose(logits[1].numpy(), full_logits(model, [2, 9], 0), atol=1e-5)


def test_a_mixed_precision_model_decodes_in_float32():
    # The trainer samples from its model, which may compute in float16.
    model = tiny_model(policy="mixed_float16")
    *_, (logits, sequences) = decode_steps(CachedDecoder(model), [[2, 7], [2]], [1, 0], 1)
    assert logits.dtype == "float32"
    np.testing.assert_allclose(logits[0].numpy(), full_logits(model, sequences[0], 1), atol=0.05)


def test_the_positions_of_the_model_are_a_limit():
    decoder = CachedDecoder(tiny_model())
    decoder.check_positions(10, 39)  # 10 + 38 fed tokens: all 48 positions
    with pytest.raises(UserError, match="need 49 positions but the model has 48"):
        decoder.check_positions(10, 40)


def test_right_pad():
    array, lengths = right_pad([[1, 2], [3], [4, 5, 6]], -1)
    assert array.tolist() == [[1, 2, -1], [3, -1, -1], [4, 5, 6]]
    assert lengths.tolist() == [2, 1, 3]


@pytest.mark.parametrize("prompt", ["", "很好的"])
def test_greedy_generate_equals_the_reference(prompt):
    model = tiny_model()
    options = GenerationOptions(max_new_tokens=10, min_new_tokens=3, greedy=True)
    fast = generate(model, TOKENIZER, [0, 1, 2], n=2, prompt=prompt, options=options)
    slow = reference_generate(model, TOKENIZER, [0, 1, 2], n=2, prompt=prompt, options=options)
    assert [g.token_ids for g in fast] == [g.token_ids for g in slow]
    assert [g.text for g in fast] == [g.text for g in slow]
    assert len({tuple(g.token_ids) for g in fast}) > 1  # labels lead to different texts


def test_the_xla_step_chooses_what_the_plain_one_chooses():
    model = tiny_model()
    xla, plain = Decoding(model, jit_compile=True), plain_decoding(model)

    def run(decoder, **options):
        out = generate(model, TOKENIZER, [0, 1], n=2, prompts=["很", "好的"], decoding=decoder,
                       options=GenerationOptions(max_new_tokens=10, **options))
        return [g.token_ids for g in out]

    penalties = dict(greedy=True, repetition_penalty=1.5, no_repeat_ngram=2)
    assert run(xla, **penalties) == run(plain, **penalties)
    # The random numbers are drawn outside XLA, whose generator is not TensorFlow's.
    for sampling in (dict(top_k=6, top_p=0.8, temperature=0.8, seed=4), dict(top_k=3, seed=4)):
        assert run(xla, **sampling) == run(plain, **sampling) != run(xla, **dict(sampling, seed=5))


def test_rows_of_different_prompts_decode_as_if_alone():
    model = tiny_model(cond_hidden_units=8)
    options = GenerationOptions(max_new_tokens=8, greedy=True, repetition_penalty=1.3,
                                no_repeat_ngram=2)
    prompts, labels = ["很", "好的酒店服务", "不错"], [2, 0, 1]
    decoder = plain_decoding(model)
    together = generate(model, TOKENIZER, labels, prompts=prompts, options=options,
                        decoding=decoder)
    for g, label, prompt in zip(together, labels, prompts):
        alone = generate(model, TOKENIZER, [label], prompt=prompt, options=options,
                         decoding=decoder)[0]
        assert (g.label_id, g.prompt, g.token_ids) == (label, prompt, alone.token_ids)


def test_one_beam_equals_greedy_on_the_model():
    model = tiny_model()
    decoding = plain_decoding(model)
    search = decoding.beam_search(TOKENIZER)
    options = GenerationOptions(max_new_tokens=10, min_new_tokens=2)
    rows = [Row(TOKENIZER.encode_prompt(t), label, options, 0)
            for t, label in (("", 0), ("很好", 1))]
    greedy = generate(model, TOKENIZER, [0, 1], prompts=["", "很好"], decoding=decoding,
                      options=GenerationOptions(max_new_tokens=10, min_new_tokens=2, greedy=True))
    one = search.results(loop(search, search.start(rows, 1, 1)))
    assert one == [g.token_ids for g in greedy]
    assert len(search.results(loop(search, search.start(rows, 3, 2)))) == 4


def test_seeded_sampling_is_reproducible_and_streams_its_text():
    model = tiny_model()
    options = GenerationOptions(max_new_tokens=12, top_k=8, top_p=0.9, seed=5)
    pieces, decoder = {}, plain_decoding(model)
    first = generate(model, TOKENIZER, [0, 1], n=3, prompt="很", options=options,
                     stream=lambda row, text: pieces.setdefault(row, []).append(text),
                     decoding=decoder)
    again = generate(model, TOKENIZER, [0, 1], n=3, prompt="很", options=options,
                     decoding=decoder)
    other = generate(model, TOKENIZER, [0, 1], n=3, prompt="很", decoding=decoder,
                     options=GenerationOptions(max_new_tokens=12, top_k=8, top_p=0.9, seed=6))
    assert [g.text for g in first] == [g.text for g in again]
    assert [g.text for g in first] != [g.text for g in other]
    for row, g in enumerate(first):
        assert pieces[row][-1] is None and None not in pieces[row][:-1]  # the end, once
        assert "很" + "".join(pieces[row][:-1]) == g.text
        assert not set(g.token_ids) & {0, 1, 2, 3, 4}


def test_beam_generate_returns_n_best_per_label():
    model = tiny_model()
    out = generate(model, TOKENIZER, [0, 2], n=2, decoding=plain_decoding(model),
                   options=GenerationOptions(max_new_tokens=6, num_beams=3))
    assert [g.label_id for g in out] == [0, 0, 2, 2]
    with pytest.raises(Exception, match="num_beams"):
        generate(model, TOKENIZER, [0], n=4, options=GenerationOptions(num_beams=3))


def test_generate_refuses_more_positions_than_the_model_has():
    model = tiny_model()
    generate(model, TOKENIZER, [0], options=GenerationOptions(max_new_tokens=48, greedy=True),
             decoding=plain_decoding(model))  # [CLS] + 47 fed tokens: all 48 positions
    with pytest.raises(UserError, match="positions"):
        generate(model, TOKENIZER, [0], options=GenerationOptions(max_new_tokens=49),
                 decoding=plain_decoding(model))
    assert generate(model, TOKENIZER, []) == []
