"""Rows leaving and joining a running batch (the server's continuous batching).

Every row of a :class:`~cln_textgen.generation.engine.DecodeState` carries
all it needs (history, place in its own cache row, norms, options), so a
batch can be rebuilt between two steps from any rows of running batches:
:func:`regroup` gathers them, pads or cuts the history and cache to a new
width, and adds finished filler rows up to a row count.  A row decodes the
same tokens whatever rows it is batched with: its seed, its columns and its
attention are its own.
"""

import numpy as np

from cln_textgen.backend import tf
from cln_textgen.generation.decoder import cache_length


def needed_width(state, rows=None):
    """The history and cache width the live ``rows`` (default: all) still need."""
    length = state.prompt_length.numpy() + state.params["max_new_tokens"].numpy()
    live = ~state.done.numpy()
    if rows is not None:
        keep = np.zeros_like(live)
        keep[list(rows)] = True
        live &= keep
    return cache_length(int(length[live].max())) if live.any() else 0


def regroup(parts, width, rows):
    """One batch of the rows ``index`` of each ``(state, index)`` in ``parts``,
    in that order, then finished filler rows up to ``rows`` in all; history and
    cache padded or cut to ``width`` columns.  A row's contrast row must be
    among the rows taken.  The cache becomes new variables."""
    pieces, offset = [], 0
    for state, index in parts:
        index = np.asarray(index, np.int32)
        position = np.full(int(state.done.shape[0]), -1, np.int32)
        position[index] = np.arange(len(index)) + offset
        partner = position[state.partner.numpy()[index]]
        if (partner < 0).any():
            raise ValueError("a row was taken without its contrast row")
        pieces.append((_take(state, tf.constant(index), width), partner))
        offset += len(index)
    states = [p for p, _ in pieces]
    merged = _map(lambda *xs: tf.concat(xs, 0), states)
    merged = merged._replace(partner=tf.constant(np.concatenate([p for _, p in pieces]),
                                                 tf.int32))
    if rows > offset:
        filler = _take(merged, tf.zeros(rows - offset, tf.int32), width)
        filler = filler._replace(done=tf.ones(rows - offset, tf.bool),
                                 main=tf.zeros(rows - offset, tf.bool),
                                 partner=tf.range(offset, rows), last=tf.fill([rows - offset], -1))
        merged = _map(lambda a, b: tf.concat([a, b], 0), [merged, filler])
    keys, values = merged.cache
    return merged._replace(cache=(tuple(tf.Variable(k, trainable=False) for k in keys),
                                  tuple(tf.Variable(v, trainable=False) for v in values)))


def _take(state, index, width):
    """Rows ``index`` of ``state``, history and cache at ``width`` columns (tensors)."""
    def rows(t):
        return tf.gather(tf.convert_to_tensor(t), index)

    def columns(t, fill):
        have = int(t.shape[1])
        if have >= width:
            return t[:, :width]
        pad = [[0, 0], [0, width - have]] + [[0, 0]] * (len(t.shape) - 2)
        return tf.pad(t, pad, constant_values=fill)

    keys, values = state.cache
    return state._replace(
        scores=rows(state.scores), short=tuple(rows(t) for t in state.short),
        history=columns(rows(state.history), -1), length=rows(state.length),
        prompt_length=rows(state.prompt_length), done=rows(state.done), last=rows(state.last),
        partner=rows(state.partner), main=rows(state.main), row_id=rows(state.row_id),
        params={k: rows(v) for k, v in state.params.items()},
        norms=tuple(tuple(rows(t) for t in pair) for pair in state.norms),
        cache=(tuple(columns(rows(k), 0.0) for k in keys),
               tuple(columns(rows(v), 0.0) for v in values)))


def _map(fn, states):
    """``fn`` over the matching per-row fields of ``states``."""
    first = states[0]
    return first._replace(
        scores=fn(*[s.scores for s in states]),
        short=tuple(fn(*xs) for xs in zip(*[s.short for s in states])),
        history=fn(*[s.history for s in states]), length=fn(*[s.length for s in states]),
        prompt_length=fn(*[s.prompt_length for s in states]),
        done=fn(*[s.done for s in states]), last=fn(*[s.last for s in states]),
        partner=fn(*[s.partner for s in states]), main=fn(*[s.main for s in states]),
        row_id=fn(*[s.row_id for s in states]),
        params={k: fn(*[s.params[k] for s in states]) for k in first.params},
        norms=tuple(tuple(fn(*xs) for xs in zip(*pairs))
                    for pairs in zip(*[s.norms for s in states])),
        cache=tuple(tuple(fn(*xs) for xs in zip(*caches))
                    for caches in zip(*[s.cache for s in states])))
