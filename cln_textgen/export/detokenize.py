"""Token ids to text inside a TensorFlow graph, as the package's tokenizer decodes.

The package decodes with bert4keras's ``Tokenizer.decode``: special tokens
(``[...]``) are dropped, ``##`` pieces are glued to what precedes them, a CJK
character or a punctuation mark is appended as is (punctuation then takes a
space), another token joins without a space after a CJK character and with
one otherwise; regular expressions then tidy the spaces.  What a token adds
depends only on the token and on whether the text so far ends in a CJK
character, so each vocabulary entry's piece is worked out here in Python
(with bert4keras's own character rules) and the graph only picks pieces,
joins them and applies the same expressions (RE2 spellings of bert4keras's
Python ones).
"""

import numpy as np

from cln_textgen.backend import bert4keras, tf

_DROP, _FIXED, _WORD = 0, 1, 2


def _char_class(chars):
    """An RE2 character class matching exactly ``chars`` (every one escaped)."""
    return "[" + "".join(f"\\x{{{ord(c):x}}}" for c in sorted(set(chars))) + "]"


# bert4keras's clean-up, in its order; Python's \d is any Unicode decimal digit
# and str.strip() removes every character for which str.isspace() holds.
_SPACE = _char_class(chr(c) for c in range(0x110000) if chr(c).isspace())
_CLEAN_UP = (
    (" +", " "),
    ("' (re|m|s|t|ve|d|ll) ", "'\\1 "),
    ("(" + _char_class(bert4keras.tokenizers.Tokenizer._cjk_punctuation() + "+-/={(<[")
     + ") ", "\\1"),
    ("(\\p{Nd}\\.) (\\p{Nd})", "\\1\\2"),
    (f"^{_SPACE}+|{_SPACE}+$", ""),
)


def piece_table(tokens):
    """Per vocabulary id: ``(kind, piece, spaced, ends_cjk)`` arrays.

    ``kind``: dropped, fixed (``piece`` whatever precedes) or a word (``piece``
    after a CJK character, ``spaced`` otherwise and at the start); ``ends_cjk``:
    whether the text ends in a CJK character once the token is added."""
    rules = bert4keras.tokenizers.Tokenizer
    kinds, pieces, spaced, ends = [], [], [], []
    for token in tokens:
        kind, piece = _WORD, token
        if rules._is_special(token):
            kind, piece = _DROP, ""
        elif token[:2] == "##":
            kind, piece = _FIXED, token[2:]
        elif len(token) == 1 and rules._is_cjk_character(token):
            kind = _FIXED
        elif len(token) == 1 and rules._is_punctuation(token):
            kind, piece = _FIXED, token + " "
        if not piece:  # adds nothing (a bare "##"): as if absent
            kind = _DROP
        kinds.append(kind)
        pieces.append(piece)
        spaced.append(" " + piece if kind == _WORD else piece)
        ends.append(bool(piece) and rules._is_cjk_character(piece[-1]))
    return (np.array(kinds, np.int32), np.array(pieces, object), np.array(spaced, object),
            np.array(ends, bool))


class Detokenizer(tf.Module):
    """``(rows, length)`` int32 ids (-1: none) to ``(rows,)`` UTF-8 strings."""

    def __init__(self, tokens, name="detokenizer"):
        super().__init__(name=name)
        kinds, pieces, spaced, ends = piece_table(tokens)
        self.kinds = tf.constant(kinds)
        self.pieces = tf.constant(pieces.astype(str).tolist(), tf.string)
        self.spaced = tf.constant(spaced.astype(str).tolist(), tf.string)
        self.ends_cjk = tf.constant(ends)

    def __call__(self, ids):
        ids = tf.convert_to_tensor(ids, tf.int32)
        valid = (ids >= 0) & (ids < tf.size(self.kinds))
        safe = tf.where(valid, ids, 0)
        kept = tf.ragged.boolean_mask(safe, valid & (tf.gather(self.kinds, safe) != _DROP))
        flat = kept.flat_values
        rows = kept.value_rowids()
        first = tf.concat([[True], rows[1:] != rows[:-1]], 0)[:tf.size(flat)]
        after_cjk = tf.concat([[False], tf.gather(self.ends_cjk, flat)[:-1]], 0)[:tf.size(flat)]
        after_cjk &= ~first
        words = tf.gather(self.kinds, flat) == _WORD
        pieces = tf.where(words & ~after_cjk, tf.gather(self.spaced, flat),
                          tf.gather(self.pieces, flat))
        text = tf.strings.reduce_join(kept.with_flat_values(pieces), axis=1)
        for pattern, rewrite in _CLEAN_UP:
            text = tf.strings.regex_replace(text, pattern, rewrite)
        return text
