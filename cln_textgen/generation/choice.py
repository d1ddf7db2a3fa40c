"""Choosing a token from processed logits, as TensorFlow functions of tensors.

The samplers (:mod:`cln_textgen.generation.samplers`) call these with the
Python values of their options; the exported SavedModel's graph
(:mod:`cln_textgen.export`) calls the same functions with tensors, so both
choose the same tokens for the same seed.

Randomness is stateless and per row (:func:`row_seeds`); a draw is the
argmax of the logits plus Gumbel noise (:func:`gumbel_draw`).
"""

import numpy as np

from cln_textgen.backend import tf

# Steps per row that the per-row seeds keep apart: (row, step) is folded into
# one seed word as row * _STEPS + step.
_STEPS = 2**20


def row_seeds(seed, row_ids, step):
    """``(rows, 2)`` int64 stateless seeds of one step: ``(seed, row, step)`` per row.
    A numpy array, or a tensor when ``row_ids`` is one (in a graph)."""
    if isinstance(row_ids, tf.Tensor):
        rows = tf.cast(row_ids, tf.int64)
        return tf.stack([tf.fill(tf.shape(rows), tf.cast(seed, tf.int64)),
                         rows * _STEPS + tf.cast(step, tf.int64)], axis=1)
    rows = np.asarray(row_ids, np.int64)
    return np.stack([np.full_like(rows, seed), rows * _STEPS + step], axis=1)


def gumbel_draw(logits, seeds):
    """One id per row drawn from ``softmax(logits)``, as the argmax of the
    logits plus Gumbel noise: exact, and 3x faster than ``tf.random.categorical``
    on a 21k vocabulary, which XLA also cannot compile with a 64-bit seed.
    ``seeds``: ``(rows, 2)``, the row's own seed (see :func:`row_seeds`)."""
    tiny = np.finfo(np.float32).tiny
    width = logits.shape[-1] if logits.shape[-1] is not None else tf.shape(logits)[-1]
    uniform = tf.vectorized_map(
        lambda seed: tf.random.stateless_uniform((width,), seed, minval=tiny, maxval=1.0),
        seeds)
    return tf.argmax(logits - tf.math.log(-tf.math.log(uniform)), axis=-1, output_type=tf.int32)


def mask_tokens(logits, banned):
    """``logits`` with the tokens of the ``(vocab,)`` bool mask ``banned`` at -inf."""
    return tf.where(banned[None, :], tf.constant(-np.inf, logits.dtype), logits)


def top_k_shortlist(logits, k):
    """``(values, ids)`` of the ``k`` highest logits of each row (``k`` an int or
    a scalar tensor; more than the vocabulary means all of it)."""
    vocab = logits.shape[-1]
    k = min(k, vocab) if isinstance(k, int) else tf.minimum(k, tf.shape(logits)[-1])
    return tf.math.top_k(logits, k=k)


def nucleus(values, p, normaliser):
    """``values`` (sorted, highest first) with all but the nucleus at -inf: the
    fewest leading tokens whose probability, under ``softmax(normaliser)``,
    reaches ``p``; the first token always stays."""
    probs = tf.exp(values - tf.reduce_logsumexp(normaliser, -1, keepdims=True))
    keep = tf.cumsum(probs, axis=-1, exclusive=True) < p
    return tf.where(keep, values, tf.constant(-np.inf, values.dtype))


def draw_among(values, ids, seed):
    """One of ``ids`` per row, drawn from ``softmax(values)`` (:func:`gumbel_draw`)."""
    return tf.gather(ids, gumbel_draw(values, seed), batch_dims=1)


def top_k_draw(logits, k, seed):
    """A draw among the ``k`` most likely tokens."""
    return draw_among(*top_k_shortlist(logits, k), seed)


def top_p_shortlist(logits, p, k):
    """Top-k then top-p: the top ``k``, renormalised, cut to their nucleus."""
    values, ids = top_k_shortlist(logits, k)
    return nucleus(values, p, values), ids


# Shortlist sizes that nucleus sampling without top-k tries before the whole
# vocabulary (see TopPSampler).
_CANDIDATES = (64, 1024)


def top_p_draw(logits, p, seed):
    """Nucleus sampling over the whole vocabulary, found from a partial sort."""
    vocab = logits.shape[-1]
    sizes = [k for k in _CANDIDATES if k < vocab] + [vocab]
    return _smallest_nucleus(logits, tf.nn.softmax(logits), p, sizes, seed)


def _smallest_nucleus(logits, probs, p, sizes, seed):
    # When the top k hold mass >= p in every row, the nucleus lies inside them.
    k, larger = sizes[0], sizes[1:]
    if not larger:
        return _nucleus_draw(logits, k, p, seed)
    enough = tf.reduce_all(tf.reduce_sum(tf.math.top_k(probs, k).values, -1) >= p)
    return tf.cond(enough, lambda: _nucleus_draw(logits, k, p, seed),
                   lambda: _smallest_nucleus(logits, probs, p, larger, seed))


def _nucleus_draw(logits, k, p, seed):
    values, ids = tf.math.top_k(logits, k=k)
    return draw_among(nucleus(values, p, logits), ids, seed)
