"""Text to token ids inside a TensorFlow graph, as the package's tokenizer encodes.

The package encodes a prompt with bert4keras's ``Tokenizer``
(``TextTokenizer.encode_prompt``: ``[CLS]`` and the word pieces, no ``[SEP]``).
A SavedModel that takes its prompt as a string must give the same ids with core
TensorFlow ops only, so that TensorFlow Serving runs it without custom op
libraries.  Whatever bert4keras decides from a character alone is therefore
worked out here in Python, once per process, with bert4keras's own predicates,
``str.lower`` and ``unicodedata`` over every code point, and kept as tables of
runs of equal values (looked up with ``tf.searchsorted``); the graph decodes
UTF-8, looks characters up, splits words and runs WordPiece against a hash
table of the vocabulary.  bert4keras's steps, and how each is reproduced:

* ``do_lower_case``: ``str.lower()``, NFD, characters of category Mn dropped.
  ``str.lower()`` maps each character on its own (``İ`` to two, ``i`` and
  U+0307) except Σ, which becomes ς when a cased character precedes it
  and none follows, case-ignorable characters skipped (Python's final-sigma
  rule, looked at within one prompt); both properties are read off
  ``str.lower()`` itself, by probing.  NFD is each character's decomposition
  followed by the canonical ordering: non-starters between two starters are
  sorted stably by combining class.  The ordering is kept (one stable sort)
  because a few spacing marks (Mc, e.g. U+302E, U+1D165) have a class and so
  survive the Mn filter in an order that depends on it.
* per character: punctuation and CJK characters become words of their own,
  spaces separate words, NUL, U+FFFD and Cc/Cf characters vanish; bert4keras
  then splits with ``str.split()``, so the other characters that
  ``str.isspace()`` calls space (U+2028, U+2029) separate words too.
* WordPiece: greedy longest match with ``##`` pieces; a word longer than
  ``word_maxlen`` or with no match at some position stays whole (its own id
  if the vocabulary has it, else [UNK]).  No piece is longer than the longest
  vocabulary token made of word characters, so the graph looks every substring
  up to that length up at once, then walks all words together in a
  ``tf.while_loop``, one piece per step.

The input is bytes.  Invalid UTF-8 is not an error: it becomes U+FFFD where
Python's ``data.decode("utf-8", "replace")`` puts it (the same code points on
random bytes), and bert4keras drops U+FFFD, so a prompt's ids are exactly
those of ``encode_prompt(data.decode("utf-8", "replace"))``; a Python string
with lone surrogates has no UTF-8 form and cannot be passed.  The tables follow
the Unicode version of the Python that builds them, as the package's own
tokenizer does when run by that Python.  Nothing else diverges.
"""

import functools
import unicodedata

import numpy as np

from cln_textgen.backend import bert4keras, tf
from cln_textgen.model.tokenization import TextTokenizer

_WORD, _ALONE, _SPACE, _DROP = 0, 1, 2, 3  # what a character does to the words
_SIGMA, _FINAL_SIGMA = 0x3A3, 0x3C2
_UNICODE = 0x110000


def _runs(values):
    """Per-code-point ``values`` as ``(starts, values)`` of their runs."""
    values = np.asarray(values)
    starts = np.concatenate([[0], np.flatnonzero(values[1:] != values[:-1]) + 1])
    return starts.astype(np.int32), values[starts]


def _at(table, codes):
    """The value of each code point in a table of runs (graph or numpy)."""
    starts, values = table
    if isinstance(codes, np.ndarray):
        return values[np.searchsorted(starts, codes, side="right") - 1]
    return tf.gather(values, tf.searchsorted(starts, codes, side="right") - 1)


def _shifted(x, fill):
    """``x`` one place later, ``fill`` first (empty stays empty)."""
    return tf.concat([tf.fill([1], tf.cast(fill, x.dtype)), x], 0)[:-1]


@functools.lru_cache(maxsize=None)
def character_kinds():
    """Runs of what each code point does to the words (``_WORD``, ``_ALONE``,
    ``_SPACE``, ``_DROP``), decided by bert4keras's tests in bert4keras's order
    (a character can pass several), then by ``str.isspace()`` for what reaches
    ``str.split()``.  About a second, once per process."""
    rules = bert4keras.tokenizers.Tokenizer
    kinds = np.full(_UNICODE, _WORD, np.int32)
    for code in range(_UNICODE):
        ch = chr(code)
        if rules._is_punctuation(ch) or rules._is_cjk_character(ch):
            kinds[code] = _ALONE
        elif rules._is_space(ch):
            kinds[code] = _SPACE
        elif code == 0 or code == 0xFFFD or rules._is_control(ch):
            kinds[code] = _DROP
        if kinds[code] != _DROP and ch.isspace():  # what str.split() splits at
            kinds[code] = _SPACE
    return _runs(kinds)


@functools.lru_cache(maxsize=None)
def lowercase_tables():
    """What ``lowercase_and_normalize`` needs, per code point (about a second, once).

    ``expansions``: ``(codes, [n, width] characters, -1 padded)`` for every
    character that ``str.lower`` or NFD changes; runs of the combining class,
    of category Mn, and of the two properties of the final-sigma rule:
    case-ignorable (``A?Σ`` ends in ς but ``1?Σ`` does not) and, for the rest,
    cased (``1?Σ`` ends in ς).
    """
    combining = np.zeros(_UNICODE, np.int32)
    marks, ignorable, cased = (np.zeros(_UNICODE, bool) for _ in range(3))
    changed = {}
    for code in range(_UNICODE):
        ch = chr(code)
        combining[code] = unicodedata.combining(ch)
        marks[code] = unicodedata.category(ch) == "Mn"
        after_letter = ("A" + ch + "\u03a3").lower()[-1] == "\u03c2"
        after_digit = ("1" + ch + "\u03a3").lower()[-1] == "\u03c2"
        ignorable[code] = after_letter and not after_digit
        cased[code] = after_digit
        folded = unicodedata.normalize("NFD", ch.lower())
        if folded != ch:
            changed[code] = [ord(c) for c in folded]
    width = max(map(len, changed.values()))
    rows = np.full((len(changed), width), -1, np.int32)
    for i, folded in enumerate(changed.values()):
        rows[i, :len(folded)] = folded
    return {"expansions": (np.array(list(changed), np.int32), rows),
            "combining": _runs(combining), "marks": _runs(marks),
            "ignorable": _runs(ignorable), "cased": _runs(cased)}


def _constant(table):
    return tuple(tf.constant(part) for part in table)


class GraphTokenizer(tf.Module):
    """UTF-8 prompts to ``[CLS]`` + word-piece ids, as ``TextTokenizer.encode_prompt``.

    ``GraphTokenizer(token_dict, lower_case)`` takes what ``TextTokenizer``
    takes.  ``tokenizer(text)`` (or ``encode_prompt``): a scalar ``tf.string``
    to ``[P]`` int32 ids; ``encode_batch(texts)``: ``[B]`` strings to
    ``[B, (P)]`` ragged int32 ids.  Both build ops for the caller's
    ``tf.function``; the vocabulary is a tracked hash table and the character
    tables are constants, so a SavedModel holds all of it.
    """

    def __init__(self, token_dict, lower_case=True, name="tokenizer"):
        super().__init__(name=name)
        package = TextTokenizer(token_dict, lower_case)  # checks the special tokens
        self.lower_case = bool(lower_case)
        self.cls_id, self.unk_id = package.cls_id, package.unk_id
        self.word_maxlen = package._tokenizer._word_maxlen  # the limit the package's tokenizer has
        kinds = character_kinds()
        self.kinds = _constant(kinds)
        self.longest = _longest_piece(token_dict, kinds, self.word_maxlen)
        self.vocab = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(token_dict), tf.string),
            tf.constant(list(token_dict.values()), tf.int64)), default_value=-1)
        if self.lower_case:
            tables = lowercase_tables()
            self.expansions = _constant(tables["expansions"])
            self.combining, self.marks, self.ignorable, self.cased = (
                _constant(tables[key]) for key in ("combining", "marks", "ignorable", "cased"))

    def __call__(self, text):
        """``[P]`` int32 ids of one prompt (a scalar ``tf.string``)."""
        return self.encode_batch(tf.reshape(text, [1])).values

    encode_prompt = __call__

    def encode_batch(self, texts):
        """``[B, (P)]`` ragged int32 ids of ``[B]`` prompts, each ``[CLS]`` first."""
        texts = tf.convert_to_tensor(texts, tf.string)
        chars = tf.strings.unicode_decode(texts, "UTF-8", errors="replace",
                                          replacement_char=0xFFFD)
        codes, rows = chars.flat_values, chars.value_rowids()
        if self.lower_case:
            codes, rows = self._lower_and_normalize(codes, rows)
        ids, rows = self._word_pieces(*self._words(codes, rows))
        # [CLS] in front of each row: a stable sort by row puts it before the
        # row's pieces (a ragged concat would do it too, but logs a oneDNN
        # complaint about int64 on some CPUs)
        count = tf.size(texts, tf.int64)
        rows = tf.concat([tf.range(count), rows], 0)
        ids = tf.concat([tf.fill([count], tf.constant(self.cls_id, tf.int64)), ids], 0)
        order = tf.argsort(rows, stable=True)
        return tf.RaggedTensor.from_value_rowids(
            tf.cast(tf.gather(ids, order), tf.int32), tf.gather(rows, order), nrows=count)

    def _lower_and_normalize(self, codes, rows):
        """``str.lower()``, NFD and no Mn, over the characters of all rows."""
        final = (codes == _SIGMA) & self._sigma_is_final(codes, rows)
        keys, folded = self.expansions
        index = tf.minimum(tf.searchsorted(keys, codes), tf.size(keys) - 1)
        own = tf.pad(codes[:, None], [[0, 0], [0, folded.shape[1] - 1]], constant_values=-1)
        chars = tf.where((tf.gather(keys, index) == codes)[:, None], tf.gather(folded, index), own)
        chars = tf.where(final[:, None], tf.one_hot(0, folded.shape[1], _FINAL_SIGMA, -1), chars)
        present = chars >= 0
        codes = tf.boolean_mask(chars, present)
        rows = tf.boolean_mask(tf.broadcast_to(rows[:, None], tf.shape(chars, tf.int64)), present)
        codes, rows = self._canonical_order(codes, rows)
        kept = ~_at(self.marks, codes)
        return tf.boolean_mask(codes, kept), tf.boolean_mask(rows, kept)

    def _sigma_is_final(self, codes, rows):
        """Where Python's final-sigma rule holds: the nearest characters that are
        not case-ignorable, in the same row, are cased before and not cased after."""
        count = tf.size(codes, tf.int64)
        anchor = ~_at(self.ignorable, codes)
        before = tf.cumsum(tf.cast(anchor, tf.int64), exclusive=True)
        # the anchors' places, with `count` (no character) before and after them
        spots = tf.concat([[count], tf.where(anchor)[:, 0], [count]], 0)
        cased = tf.concat([_at(self.cased, codes), [False]], 0)
        row_of = tf.concat([rows, [-1]], 0)

        def cased_at(index):
            spot = tf.gather(spots, index)
            return tf.gather(cased, spot) & (tf.gather(row_of, spot) == rows)

        return cased_at(before) & ~cased_at(before + tf.cast(anchor, tf.int64) + 1)

    def _canonical_order(self, codes, rows):
        """NFD's stable sort of each run of non-starters by combining class."""
        combining = tf.cast(_at(self.combining, codes), tf.int64)
        group = tf.cumsum(tf.cast((combining == 0) | (rows != _shifted(rows, -1)), tf.int64))
        order = tf.argsort(group * 256 + combining, stable=True)
        return tf.gather(codes, order), tf.gather(rows, order)

    def _words(self, codes, rows):
        """``[W, (chars)]`` code points of the words, and each word's row."""
        kind = _at(self.kinds, codes)
        kept = kind != _DROP
        codes, rows, kind = (tf.boolean_mask(x, kept) for x in (codes, rows, kind))
        starts = (kind == _ALONE) | (_shifted(kind, _SPACE) != _WORD) | (rows != _shifted(rows, -1))
        kept = kind != _SPACE
        codes, rows, starts = (tf.boolean_mask(x, kept) for x in (codes, rows, starts))
        word_rows = tf.boolean_mask(rows, starts)
        word = tf.cumsum(tf.cast(starts, tf.int64)) - 1
        words = tf.RaggedTensor.from_value_rowids(codes, word, tf.size(word_rows, tf.int64))
        return words, word_rows

    def _word_pieces(self, words, word_rows):
        """Ids of the words' pieces, in order, and the row of each."""
        word = words.value_rowids()
        offset = tf.range(tf.size(word, tf.int64)) - tf.gather(words.row_starts(), word)
        size, size_id = self._longest_matches(words, word, offset)
        failed, marks = self._greedy_walk(words, size)
        # a word that stays whole is one token, at its first character
        whole = self.vocab.lookup(tf.strings.unicode_encode(words, "UTF-8"))
        whole = tf.where(whole >= 0, whole, tf.constant(self.unk_id, tf.int64))
        failed = tf.gather(failed, word)
        emitted = tf.where(failed, offset == 0, marks)
        ids = tf.where(failed, tf.gather(whole, word), size_id)
        return tf.boolean_mask(ids, emitted), tf.boolean_mask(tf.gather(word_rows, word), emitted)

    def _longest_matches(self, words, word, offset):
        """At each character: the length of the longest vocabulary piece that
        starts there within its word (``##`` after the first character; 0: none)
        and its id.  Pieces of every length up to the longest token are looked
        up at once; which of them the greedy walk uses is decided after."""
        chars = tf.strings.unicode_encode(words.flat_values[:, None], "UTF-8")
        count = tf.size(chars, tf.int64)
        length = words.row_lengths()
        # a word longer than word_maxlen matches nothing and so stays whole
        room = tf.gather(tf.where(length > self.word_maxlen, tf.zeros_like(length), length),
                         word) - offset
        piece, found = chars, []
        for k in range(1, self.longest + 1):
            if k > 1:
                piece += tf.gather(chars, tf.minimum(tf.range(count) + k - 1, count - 1))
            ids = self.vocab.lookup(tf.where(offset > 0, "##" + piece, piece))
            found.append(tf.where(room >= k, ids, tf.constant(-1, tf.int64)))
        found = tf.stack(found, 1)  # [chars, longest]: the id of each length, or -1
        size = tf.reduce_max(tf.where(found >= 0, tf.range(1, self.longest + 1, dtype=tf.int64),
                                      tf.constant(0, tf.int64)), 1)
        return size, tf.gather(found, tf.maximum(size - 1, 0)[:, None], batch_dims=1)[:, 0]

    def _greedy_walk(self, words, size):
        """bert4keras's walk through every word at once, one piece per step:
        ``(failed [W], marks [chars])``, whether a word met a character where
        no piece starts, and where the pieces taken start."""
        start = words.row_starts()
        end = start + words.row_lengths()
        last = tf.size(size, tf.int64) - 1

        def step(at, failed, marks):
            live = (at < end) & ~failed
            ahead = tf.gather(size, tf.minimum(at, last))  # a finished word points past its end
            failed |= live & (ahead == 0)
            taken = tf.boolean_mask(at, live & (ahead > 0))
            marks = tf.tensor_scatter_nd_update(marks, taken[:, None], tf.ones_like(taken, tf.bool))
            return tf.where(live, at + ahead, at), failed, marks

        _, failed, marks = tf.while_loop(
            lambda at, failed, marks: tf.reduce_any((at < end) & ~failed), step,
            (start, tf.zeros_like(start, tf.bool), tf.zeros_like(size, tf.bool)))
        return failed, marks


def _longest_piece(token_dict, kinds, word_maxlen):
    """The most characters a piece can have: a token of several characters can
    match only if all of them (after ``##``) are word characters."""
    longest = 1
    for token in token_dict:
        stem = token[2:] if token.startswith("##") else token
        if len(stem) > longest:
            codes = np.array([ord(c) for c in stem])
            if (_at(kinds, codes) == _WORD).all():
                longest = len(stem)
    return min(longest, word_maxlen)
