"""Choosing each row's next token from its processed scores.

Every row follows its own options: ``greedy`` takes the argmax; otherwise a
row with ``top_k`` > 0 or ``top_p`` < 1 draws among its shortlist (the top
``k``, renormalised, then cut to the nucleus holding ``p``: Holtzman et al.
2019), and a row with neither draws from its whole distribution.

Randomness is stateless and per row (:func:`row_seeds`): row ``r`` draws its
``s``-th new token from the seed ``(seed, r, s)``, whatever else is in the
batch, so the same seed and inputs give the same tokens, and a request gives
the same text alone, in chunks or beside other requests.  A draw is the
argmax of the scores plus Gumbel noise: over the whole vocabulary the noise
of token ``i`` is the ``i``-th number of the row's stream; over a shortlist
(sorted, likeliest first) the noise of rank ``j`` is the ``j``-th number, so
a shortlist cut wider than a row needs draws what the exact one would (a
stateless stream's first numbers do not depend on how many are drawn).

These functions never run inside XLA, which draws other numbers than
TensorFlow's kernels for the same seed: the package's loop calls them in a
plain ``tf.function`` after its compiled step, and the exported graph,
which XLA does not compile, calls them too, so both choose the same tokens.
"""

import numpy as np

from cln_textgen.backend import tf

# Steps per row that the per-row seeds keep apart: (row, step) is folded into
# one seed word as row * _STEPS + step.
_STEPS = 2**20
# The shortlist the step computes beside the scores, and the wider ones tried
# for the nucleus of rows without top-k before the whole vocabulary: sorting
# 21k scores per row costs more than the model step.
SHORTLIST = 64
_WIDER = (1024,)


def row_seeds(seed, row_ids, step):
    """``(rows, 2)`` int64 stateless seeds of one step: ``(seed, row, step)`` per
    row; ``seed`` and ``step`` may be scalars or one value per row."""
    rows = tf.cast(row_ids, tf.int64)
    seed = tf.broadcast_to(tf.cast(seed, tf.int64), tf.shape(rows))
    step = tf.broadcast_to(tf.cast(step, tf.int64), tf.shape(rows))
    return tf.stack([seed, rows * _STEPS + step], axis=1)


def gumbel_draw(scores, seeds):
    """One index per row drawn from ``softmax(scores)``, as the argmax of the
    scores plus Gumbel noise: exact, and 3x faster than ``tf.random.categorical``
    on a 21k vocabulary.  ``seeds``: ``(rows, 2)``, each row's own seed."""
    tiny = np.finfo(np.float32).tiny
    width = tf.shape(scores)[-1]
    uniform = tf.vectorized_map(
        lambda seed: tf.random.stateless_uniform((width,), seed, minval=tiny, maxval=1.0),
        seeds)
    return tf.argmax(scores - tf.math.log(-tf.math.log(uniform)), axis=-1, output_type=tf.int32)


def nucleus(values, p, normaliser):
    """``values`` (sorted, highest first) with all but each row's nucleus at
    -inf: the fewest leading tokens whose probability, under
    ``softmax(normaliser)``, reaches ``p`` (per row); the first token always
    stays, and a row with ``p`` 1 keeps every value."""
    probs = tf.exp(values - tf.reduce_logsumexp(normaliser, -1, keepdims=True))
    keep = (tf.cumsum(probs, axis=-1, exclusive=True) < p[:, None]) | (p[:, None] >= 1.0)
    return tf.where(keep, values, tf.constant(-np.inf, values.dtype))


def shortlist(scores):
    """The :data:`SHORTLIST` highest scores of each row and their ids, sorted:
    computed with the scores (inside the compiled step), so that most rows
    are chosen without another pass over the vocabulary."""
    return tf.math.top_k(scores, k=tf.minimum(SHORTLIST, tf.shape(scores)[1]))


def choose(scores, short, greedy, top_k, top_p, seeds):
    """One token id per row of the processed ``(rows, vocab)`` ``scores``, each
    row by its own ``greedy`` (bool), ``top_k`` (0: off) and ``top_p`` (1:
    off), drawn from its seed (``(rows, 2)``, see :func:`row_seeds`).
    ``short`` is :func:`shortlist` of the scores."""
    values, ids = short
    chosen = ids[:, 0]  # greedy: the argmax
    sampled = ~greedy
    cut = sampled & ((top_k > 0) | (top_p < 1.0))
    full = sampled & ~cut
    chosen = tf.where(full, tf.cond(tf.reduce_any(full), lambda: gumbel_draw(scores, seeds),
                                    lambda: chosen), chosen)
    return tf.where(cut, tf.cond(tf.reduce_any(cut),
                                 lambda: _shortlist_draw(scores, short, top_k, top_p, cut, seeds),
                                 lambda: chosen), chosen)


def _shortlist_draw(scores, short, top_k, top_p, rows, seeds):
    """The draws of the ``rows`` that sample from a shortlist (others: anything)."""
    vocab = tf.shape(scores)[1]
    k = tf.minimum(top_k, vocab)
    width = tf.reduce_max(tf.where(rows & (k > 0), k, 1))
    # Rows without top-k need the nucleus of the whole vocabulary: the
    # smallest candidate count holding mass p in every such row, found from
    # partial sorts.
    open_rows = rows & (k == 0) & (top_p < 1.0)
    width = tf.cond(tf.reduce_any(open_rows),
                    lambda: tf.maximum(width, _nucleus_width(scores, short, top_p, open_rows)),
                    lambda: width)
    values, ids = tf.cond(width <= tf.shape(short[0])[1], lambda: short,
                          lambda: tuple(tf.math.top_k(scores, k=width)))
    rank = tf.range(tf.shape(values)[1])[None, :]
    values = tf.where((k[:, None] > 0) & (rank >= k[:, None]),
                      tf.constant(-np.inf, values.dtype), values)
    # Top-k then top-p: a row with top-k renormalises over its k tokens.
    normaliser = tf.where(k[:, None] > 0, values, tf.constant(-np.inf, values.dtype))
    total = tf.reduce_logsumexp(normaliser, -1)
    total = tf.cond(tf.reduce_any(open_rows),
                    lambda: tf.where(k > 0, total, tf.reduce_logsumexp(scores, -1)),
                    lambda: total)
    values = nucleus(values, top_p, total[:, None])
    return tf.gather(ids, gumbel_draw(values, seeds), batch_dims=1)


def _nucleus_width(scores, short, top_p, rows):
    """The shortlist's width, or the first of :data:`_WIDER` (or the
    vocabulary), whose top holds mass ``top_p`` in every row of ``rows``;
    larger sorts only when needed."""
    total = tf.reduce_logsumexp(scores, -1, keepdims=True)
    vocab = tf.shape(scores)[1]

    def first_enough(sizes):
        if not sizes:
            return vocab
        size = tf.minimum(sizes[0], vocab)
        values = short[0] if sizes[0] == SHORTLIST else tf.math.top_k(scores, k=size).values
        mass = tf.reduce_sum(tf.exp(values - total), -1)
        return tf.cond(tf.reduce_all(~rows | (mass >= top_p)), lambda: size,
                       lambda: first_enough(sizes[1:]))

    return first_enough([SHORTLIST, *_WIDER])
