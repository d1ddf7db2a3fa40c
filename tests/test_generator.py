"""A generator kept open: any mix of calls, chunked decoding, the prompt kept."""

import warnings

import pytest

from cln_textgen.generation.generator import TextGenerator
from test_decoding import TOKENIZER, tiny_model

LABELS = ["a", "b", "c"]


def open_generator(**defaults):
    from cln_textgen.options import GenerationOptions

    # Without XLA: a fresh generator per call compiles afresh; XLA would make that slow.
    return TextGenerator(tiny_model(), TOKENIZER, LABELS, GenerationOptions(**defaults),
                         jit_compile=False)


def texts(generator, label, **call):
    return [s["text"] for s in generator.generate(label, **call)]


def test_the_sequence_that_broke_a_long_lived_generator():
    # Cache lengths 32, 48, 32, 32 in turn: the prompt pass once reused a
    # trace made for another cache size ("Incompatible shapes").
    generator = open_generator(max_new_tokens=30)
    for n, prompt in [(1, ""), (2, "很好的"), (1, ""), (3, "很")]:
        assert len(texts(generator, "a", n=n, prompt=prompt, seed=1)) == n


CALLS = [
    dict(label="a", n=1, prompt=""),
    dict(label="all", n=2, prompt="很好的", top_k=5),
    dict(label="b", n=1, prompt="", greedy=True),
    dict(label="c", n=3, prompt="很", top_p=0.8),
    dict(label=["a", "c"], n=2, prompt="不错", num_beams=2),
    dict(label="a", n=5, prompt="", batch_size=2, repetition_penalty=1.3),
    dict(label="all", n=1, prompt="酒店服务很好", max_new_tokens=20),
    dict(label="b", n=4, prompt="", no_repeat_ngram=2, seed=3),
    dict(label="a", n=1, prompt="很", min_new_tokens=5, max_new_tokens=8),
    dict(label="c", n=3, prompt="", num_beams=3),
    dict(label="all", n=3, prompt="房间", temperature=0.7, top_k=8, top_p=0.9),
    dict(label="a", n=2, prompt="", seed=7),
    dict(label="b", n=6, prompt="好", batch_size=4),
    dict(label="a", n=1, prompt=""),
    dict(label="c", n=2, prompt="很好的", greedy=False, top_k=3),
    dict(label="all", n=1, prompt="", greedy=True, max_new_tokens=40),
    dict(label="b", n=2, prompt="不", num_beams=2, repetition_penalty=1.2),
    dict(label="a", n=7, prompt="", batch_size=3, top_p=0.7),
    dict(label="c", n=1, prompt="价格便宜", seed=11),
    dict(label="all", n=2, prompt="", max_new_tokens=5),
    dict(label="a", n=3, prompt="很", top_k=5),
    dict(label="b", n=1, prompt="", max_new_tokens=25),
]


@pytest.mark.slow
def test_twenty_mixed_calls_on_one_generator_match_fresh_generators():
    kept = open_generator(max_new_tokens=12)
    for call in CALLS + CALLS[:3]:  # the first calls again, after all the others
        label = call["label"]
        options = {k: v for k, v in call.items() if k != "label"}
        expected = texts(open_generator(max_new_tokens=12), label, **options)
        assert texts(kept, label, **options) == expected, call
    # what the generator keeps compiled is bounded, whatever it was asked
    engine = kept.decoding.engine(TOKENIZER)
    assert 0 < len(engine._steps) <= engine._KEEP_STEPS


@pytest.mark.parametrize("options", [dict(top_k=6), dict(), dict(top_p=0.8, temperature=1.5),
                                     dict(num_beams=3), dict(greedy=True, no_repeat_ngram=2)])
def test_chunks_give_the_texts_of_one_batch(options):
    generator = open_generator(max_new_tokens=10, seed=4, **options)
    n = 1 if options.get("greedy") else 3
    whole = texts(generator, "all", n=n, prompt="很", batch_size=64)
    for batch_size in (1, 2, 5):
        assert texts(generator, "all", n=n, prompt="很", batch_size=batch_size) == whole
    if not options.get("greedy") and "num_beams" not in options:
        assert len(set(whole)) > 1  # rows draw from seeds of their own


def test_sample_i_draws_from_seed_and_i_alone():
    generator = open_generator(max_new_tokens=10, top_k=8)
    five = texts(generator, "b", n=5, seed=2)
    assert texts(generator, "b", n=3, seed=2) == five[:3]
    assert texts(generator, "b", n=3, seed=3) != five[:3]


def test_prompt_is_returned_as_typed():
    generator = open_generator(max_new_tokens=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = texts(generator, "a", n=2, prompt="Hé 很", seed=1)
    assert all(text.startswith("Hé 很") for text in out)
    assert len(caught) == 1 and "H é" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt the vocabulary covers: no warning
        texts(generator, "a", n=1, prompt="很好")


def test_api_refuses_what_the_cli_refuses():
    from cln_textgen.errors import UserError

    generator = open_generator(max_new_tokens=8)
    with pytest.raises(UserError, match="greedy decoding gives one text per label"):
        generator.generate("a", n=2, greedy=True)
    with pytest.raises(UserError, match="min_new_tokens=9 is above max_new_tokens=8"):
        generator.generate("a", min_new_tokens=9, max_new_tokens=8)
    with pytest.raises(UserError, match="unknown label 'z'"):
        generator.generate("z")
    assert len(generator.generate("a", num_beams=3)) == 3  # n follows the mode
    assert len(generator.generate("a", greedy=True)) == 1
    assert len(generator.generate("a", max_new_tokens=3)) == 5
