"""Texts leaving and joining a running batch (the server's continuous batching).

Every row of a :class:`~cln_textgen.generation.engine.DecodeState` carries
all it needs (history, place in its own cache row, norms, options), so a
batch can be rebuilt between two steps from any texts of running batches:
:func:`regroup` gathers them with their contrast rows, keeps the engine's
layout (texts first, then contrast rows), pads or cuts the history and cache
to a new width, and adds finished filler texts up to a bucket.  A text
decodes the same tokens whatever it is batched with: its seed, its columns
and its attention are its own.
"""

import numpy as np

from cln_textgen.backend import tf
from cln_textgen.generation.decoder import row_bucket, widths


def needed(state, texts=None):
    """The most tokens (prompt and new) the live ``texts`` (default: all) and
    their contrast rows may hold."""
    count = int(state.texts)
    length = state.prompt_length.numpy()[:count] + state.params["max_new_tokens"].numpy()
    live = ~state.done.numpy()[:count]
    if texts is not None:
        keep = np.zeros_like(live)
        keep[list(texts)] = True
        live &= keep
    return int(length[live].max()) if live.any() else 1


def regroup(parts, most, limit):
    """One batch of the texts ``index`` of each ``(state, index)`` in ``parts``,
    in that order, with their contrast rows; history and cache padded or cut
    to what rows of at most ``most`` tokens need (see
    :func:`~cln_textgen.generation.decoder.widths`); finished filler texts
    and contrast rows up to power-of-two counts (at most ``limit``)."""
    width = widths(most)
    texts, contrasts = [], []  # (state, row) of the new layout
    for state, index in parts:
        partner = state.partner.numpy()
        texts += [(state, int(i)) for i in index]
        contrasts += [(state, int(partner[i])) for i in index if partner[i] != i]
    count = row_bucket(len(texts), limit)
    extra = row_bucket(len(contrasts), limit) if contrasts else 0
    # Where each old row goes: texts first, contrast rows after all texts.
    position = {(id(s), r): k for k, (s, r) in enumerate(texts)}
    position.update({(id(s), r): count + k for k, (s, r) in enumerate(contrasts)})
    pieces = []
    for state, index in parts:
        partner = state.partner.numpy()
        mine = [int(i) for i in index]
        theirs = [int(partner[i]) for i in mine if partner[i] != i]
        new_partner = np.array([position[id(state), int(partner[r])] for r in mine + theirs],
                               np.int32)
        pieces.append((_take(state, mine, theirs, width), new_partner, len(mine)))
    merged = _join(pieces, count, extra)
    return merged._replace(cache=tf.Variable(merged.cache, trainable=False))


def _take(state, texts, contrasts, width):
    """``(text part, contrast part)`` of ``state``'s rows ``texts`` and
    ``contrasts``: per-text fields of the texts, per-row fields of both."""
    rows = texts + contrasts

    def pick(t, index):
        return tf.gather(t, np.asarray(index, np.int32))

    def columns(t, fill, size, axis=1):
        have = int(t.shape[axis])
        if have >= size:
            return tf.gather(t, tf.range(size), axis=axis)
        pad = [[0, 0]] * len(t.shape)
        pad[axis] = [0, size - have]
        return tf.pad(t, pad, constant_values=fill)

    return state._replace(
        scores=pick(state.scores, texts), short=tuple(pick(t, texts) for t in state.short),
        params={k: pick(v, texts) for k, v in state.params.items()},
        row_id=pick(state.row_id, texts),
        history=columns(pick(state.history, rows), -1, width[0]), length=pick(state.length, rows),
        prompt_length=pick(state.prompt_length, rows), done=pick(state.done, rows),
        last=pick(state.last, rows), partner=pick(state.partner, rows),
        norms=pick(state.norms, rows),
        cache=columns(tf.gather(state.cache, np.asarray(rows, np.int32), axis=2), 0.0, width[1],
                      axis=3))


def _join(pieces, count, extra):
    """The pieces' texts then their contrast rows, filled up to ``count`` texts
    and ``extra`` contrast rows with finished copies of the first text."""
    first = pieces[0][0]
    texts = sum(n for _, _, n in pieces)
    fill_texts, fill_rows = count - texts, extra - sum(len(p) - n for _, p, n in pieces)

    def per_text(get):
        parts = [get(state) for state, _, _ in pieces]
        parts.append(tf.repeat(get(first)[:1], fill_texts, axis=0))
        return tf.concat(parts, 0)

    def per_row(get, axis=0):
        head = [tf.gather(get(s), tf.range(n), axis=axis) for s, _, n in pieces]
        tail = [tf.gather(get(s), tf.range(n, len(p)), axis=axis) for s, p, n in pieces]
        one = tf.gather(get(first), [0], axis=axis)
        return tf.concat(head + [tf.repeat(one, fill_texts, axis=axis)] + tail
                         + [tf.repeat(one, fill_rows, axis=axis)], axis)

    partner = np.concatenate([p[:n] for _, p, n in pieces]
                             + [np.arange(texts, count, dtype=np.int32)]
                             + [p[n:] for _, p, n in pieces]
                             + [np.zeros(fill_rows, np.int32)])
    done = per_row(lambda s: s.done).numpy()
    done[texts:count] = True
    done[count + extra - fill_rows:] = True
    last = per_row(lambda s: s.last).numpy()
    last[texts:count] = -1
    last[count + extra - fill_rows:] = -1
    return first._replace(
        scores=per_text(lambda s: s.scores),
        short=tuple(per_text(lambda s, i=i: s.short[i]) for i in range(len(first.short))),
        params={k: per_text(lambda s, k=k: s.params[k]) for k in first.params},
        row_id=per_text(lambda s: s.row_id),
        history=per_row(lambda s: s.history), length=per_row(lambda s: s.length),
        prompt_length=per_row(lambda s: s.prompt_length), done=tf.constant(done),
        last=tf.constant(last), partner=tf.constant(partner, tf.int32),
        norms=per_row(lambda s: s.norms), cache=per_row(lambda s: s.cache, axis=2))
