import math
import random

import pytest

from cln_textgen.evaluation import metrics


def u(text):
    return text.split()


def test_units_split_cjk_characters_words_and_punctuation():
    expected = ["很", "好", ",", "iPhone", "12", "太", "棒", "了", "!"]
    assert metrics.units("很好, iPhone 12太棒了!") == expected
    assert metrics.units("很 好") == metrics.units("很好")  # spaces never matter
    assert metrics.units("don't") == ["don", "'", "t"]
    assert metrics.units("") == []


def test_distinct_n():
    texts = [u("a b a b"), u("a c")]
    assert metrics.distinct_n(texts, 1) == 3 / 6
    assert metrics.distinct_n(texts, 2) == 3 / 4  # ab ba ab | ac
    assert metrics.distinct_n(texts, 3) == 2 / 2
    assert metrics.distinct_n([u("a b")], 3) is None  # no trigram at all


def test_bleu_known_values():
    assert metrics.bleu(u("a b c d"), [u("a b c d")]) == pytest.approx(1.0)
    assert metrics.bleu(u("a b"), [u("c d e")]) == 0.0
    # p1..p4 = 4/5, 3/4, 2/3, 1/2; same length: no brevity penalty
    assert metrics.bleu(u("a b c d e"), [u("a b c d f")]) == pytest.approx(0.2 ** 0.25)
    # clipping: "the" counts once; bigram..4-gram precisions are 0, smoothed to 0.1/count
    expected = math.exp((math.log(1 / 4) + math.log(0.1 / 3) + math.log(0.1 / 2)
                         + math.log(0.1 / 1)) / 4)
    assert metrics.bleu(u("the the the the"), [u("the cat")]) == pytest.approx(expected)
    # brevity: 3 units against 5; a hypothesis shorter than 4 has 0 of at least 1 4-gram
    assert metrics.bleu(u("a b c"), [u("a b c d e")]) == pytest.approx(
        math.exp(1 - 5 / 3) * 0.1 ** 0.25)
    # lengths 2 and 4 are equally close to 3: the shorter wins, so no penalty
    assert metrics.bleu(u("a b c"), [u("a b"), u("a b c d")]) == pytest.approx(0.1 ** 0.25)
    # clipping counts come from the reference holding the most
    assert metrics.bleu(u("a a"), [u("a b"), u("a a")]) == pytest.approx(
        metrics.bleu(u("a a"), [u("a a")]))


def test_self_bleu_equals_bleu_against_all_others():
    rng = random.Random(1)
    texts = [[rng.choice("abcd") for _ in range(rng.randint(0, 9))] for _ in range(12)]
    texts += [list("abab"), list("abab")]  # repeated n-grams: the top-two counting path
    brute = [metrics.bleu(t, texts[:i] + texts[i + 1:]) for i, t in enumerate(texts)]
    assert metrics.self_bleu(texts) == pytest.approx(sum(brute) / len(brute))
    assert metrics.self_bleu([u("x y z w")] * 3) == pytest.approx(1.0)
    assert metrics.self_bleu([u("a b")]) is None


def test_exact_copy_rate():
    corpus = {tuple(u("a b c")), tuple(u("d e"))}
    assert metrics.exact_copy_rate([u("a b c"), u("a b"), u("d e"), u("e d")], corpus) == 0.5
    assert metrics.exact_copy_rate([], corpus) is None


def test_ngram_overlap():
    generated = [u("a b c d"), u("x y z"), u("q")]
    wanted = {g for t in generated for g in metrics.ngrams(t, 3)}
    found = metrics.ngrams_found(wanted, [u("z a b c"), u("b c d"), u("y z")], 3)
    assert found == {("a", "b", "c"), ("b", "c", "d")}
    # abc bcd found, xyz not; "q" has no trigram
    assert metrics.ngram_overlap(generated, found, 3) == (pytest.approx(2 / 3), 3)
    assert metrics.ngram_overlap([u("a b")], found, 3) == (None, 0)


def test_length_stats():
    assert metrics.length_stats([u("a"), u("a b"), u("a b c d")]) == {"mean": 7 / 3, "median": 2.0}
    assert metrics.length_stats([u("a"), u("a b c")]) == {"mean": 2.0, "median": 2.0}
    assert metrics.length_stats([]) == {"mean": None, "median": None}


def test_label_accuracy_per_label_macro_micro():
    result = metrics.label_accuracy(["a", "a", "b", "b", "b"], ["a", "b", "b", "b", "a"],
                                    ["a", "b", "c"])
    assert result["per_label"] == {"a": 0.5, "b": pytest.approx(2 / 3), "c": None}
    assert result["macro"] == pytest.approx((0.5 + 2 / 3) / 2)  # "c" has no text: left out
    assert result["micro"] == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        metrics.label_accuracy(["a"], [], ["a"])
    assert metrics.macro([None, 0.2, 0.4]) == pytest.approx(0.3)
    assert metrics.macro([None]) is None
