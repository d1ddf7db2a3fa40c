"""Beam search on the one decoding loop: its own step, the same forward pass
and processors as sampling (:mod:`cln_textgen.generation.engine`).

A sequence's score is the sum of its tokens' log-probabilities under the
processed scores (no length normalisation).  Since every step can only lower
a score, a prompt (a *group* of ``beams`` rows) is done once ``num_return``
finished sequences score at least as high as its best live beam: the result
is then exactly the best that this beam width finds.  With one beam this is
greedy search.

Each step takes, per group, the ``2 * beams`` best extensions of its live
beams: an end of text among the first ``beams`` of them finishes a sequence,
and the first ``beams`` others become the new beams (copies of the best one
fill the places of missing ones, at score -inf).  Finished sequences are
kept per group, best first (the earlier found first among equal scores).
Guided beams keep their contrast rows beside them, reordered with them.
"""

from typing import NamedTuple

import numpy as np

from cln_textgen.backend import tf
from cln_textgen.generation.engine import DecodeState, attached, detached, of_every_row
from cln_textgen.generation.processors import process

NEG_INF = -np.inf


class BeamState(NamedTuple):
    rows: DecodeState  # groups * beams rows, group by group (then their contrast rows)
    beam_scores: object  # (groups * beams,) float32
    finished_scores: object  # (groups, returns) float32, -inf where empty
    finished_history: object  # (groups, returns, width) int32: the rows' histories
    finished_length: object  # (groups, returns) int32
    group_done: object  # (groups,) bool


class BeamSearch:
    """Beam search over an :class:`~cln_textgen.generation.engine.Engine`'s
    decoder and context; the beams and sequences kept per group are the
    shapes of its state."""

    def __init__(self, engine):
        self.engine = engine
        self._step = tf.function(self._step_impl)

    def start(self, rows, beams, returns):
        """``beams`` beams for each of ``rows`` (:class:`~cln_textgen.generation.engine.Row`,
        one per group), keeping its ``returns`` best sequences.  Only the first
        beam of a group starts live, so the first step does not pick one
        token once per identical beam."""
        if returns > beams:
            raise ValueError(f"beam search returns at most num_beams={beams} sequences, "
                             f"not {returns}")
        state = self.engine.start([row for row in rows for _ in range(beams)])
        return self.begin(state, beams, returns)

    def begin(self, state, beams, returns):
        """The :class:`BeamState` of a started batch (the engine's ``state``,
        ``beams`` rows per group, group by group)."""
        groups = state.texts // beams
        width = tf.shape(state.history)[1]
        first = tf.tile(tf.concat([[0.0], tf.fill([beams - 1], NEG_INF)], 0), [groups])
        return BeamState(
            rows=state._replace(short=()),  # beams choose from the scores themselves
            beam_scores=first,
            finished_scores=tf.fill([groups, returns], NEG_INF),
            finished_history=tf.fill([groups, returns, width], -1),
            finished_length=tf.zeros([groups, returns], tf.int32),
            group_done=tf.zeros([groups], tf.bool))

    @staticmethod
    def running(state):
        return tf.reduce_any(~state.group_done)

    def step(self, state):
        out = self._step(state)
        return out._replace(rows=attached(out.rows, state.rows.cache))

    def _step_impl(self, state):
        s, context = state.rows, self.engine.context
        groups = tf.shape(state.group_done)[0]
        count = tf.shape(state.beam_scores)[0]
        beams = count // groups
        returns = tf.shape(state.finished_scores)[1]
        vocab = tf.shape(s.scores)[1]
        log_probs = tf.nn.log_softmax(s.scores)
        total = tf.reshape(state.beam_scores[:, None] + log_probs, (groups, beams * vocab))
        cand, flat = tf.math.top_k(total, k=2 * beams)
        parent = tf.range(groups)[:, None] * beams + flat // vocab
        token = flat % vocab
        rank = tf.range(2 * beams)[None, :]
        valid = (cand > NEG_INF) & ~state.group_done[:, None]
        is_end = token == context.stop_id
        live = valid & ~is_end
        take_live = live & (tf.cumsum(tf.cast(live, tf.int32), axis=1, exclusive=True) < beams)
        take_end = valid & is_end & (rank < beams)

        ended = _merge(state, tf.where(take_end, cand, NEG_INF),
                       tf.gather(s.history, parent), tf.gather(s.length, parent), returns)
        # The first `beams` live candidates in rank order; copies of the best
        # fill the missing places.
        order = tf.math.top_k(tf.where(take_live, -rank, -2 * beams - rank), k=beams).indices
        found = tf.gather(take_live, order, batch_dims=1)
        best = order[:, :1]
        order = tf.where(found, order, best)
        new_scores = tf.where(found, tf.gather(cand, order, batch_dims=1), NEG_INF)
        new_parent = tf.gather(parent, order, batch_dims=1)
        new_token = tf.gather(token, order, batch_dims=1)
        best_live = tf.where(found[:, 0], new_scores[:, 0], NEG_INF)
        kept_enough = ended.finished_scores[:, -1] >= best_live
        done = state.group_done | ~found[:, 0] | kept_enough
        # Out of length: live beams count as ends.
        generated = tf.reshape(s.length[:count] - s.prompt_length[:count], (groups, beams))
        limit = tf.reshape(s.params["max_new_tokens"][:count], (groups, beams))
        last = ~done & (generated[:, 0] + 1 >= limit[:, 0])
        grown = _append(tf.gather(s.history, new_parent), tf.gather(s.length, new_parent),
                        new_token)
        ended = _merge(ended, tf.where(last[:, None], new_scores, NEG_INF), grown,
                       tf.gather(s.length, new_parent) + 1, returns)
        done = done | last

        stay = tf.repeat(done, beams)
        parents = tf.where(stay, tf.range(count), tf.reshape(new_parent, [-1]))
        chosen = tf.where(stay, context.stop_id, tf.reshape(new_token, [-1]))
        scores = tf.where(stay, NEG_INF, tf.reshape(new_scores, [-1]))
        # Contrast rows follow their beams.
        rows = _reorder(s, parents, self.engine.decoder)
        chosen_all = of_every_row(s, chosen)
        live_rows = ~of_every_row(s, stay)
        width = tf.shape(rows.history)[1]
        slots = tf.stack([tf.range(tf.shape(chosen_all)[0]), tf.minimum(rows.length, width - 1)], 1)
        history = tf.tensor_scatter_nd_update(
            rows.history, slots, tf.where(live_rows, chosen_all, tf.gather_nd(rows.history, slots)))
        rows = rows._replace(history=history, length=rows.length + tf.cast(live_rows, tf.int32),
                             done=~live_rows, last=tf.where(live_rows, chosen_all, -1))

        feed = tf.where(rows.done, context.stop_id, chosen_all)
        logits, cache = self.engine.decoder.step(feed, rows.length - 1, rows.norms, rows.cache)
        rows = rows._replace(scores=process(logits, rows._replace(cache=cache), context),
                             short=(), cache=cache)
        return ended._replace(rows=detached(rows), beam_scores=scores, group_done=done)

    def results(self, state):
        """Per group, its ``returns`` best sequences (new ids), best first."""
        scores, history, length = (t.numpy() for t in (state.finished_scores,
                                                       state.finished_history,
                                                       state.finished_length))
        start = state.rows.prompt_length.numpy()
        beams = state.beam_scores.shape[0] // scores.shape[0]
        out = []
        for group in range(scores.shape[0]):
            prompt = start[group * beams]
            for k in range(scores.shape[1]):
                # Fewer ends than asked for happens only when every token is banned.
                ids = history[group, k, prompt:length[group, k]].tolist()
                out.append(ids if scores[group, k] > NEG_INF else [])
        return out


def _merge(state, scores, history, length, returns):
    """``state`` with candidate ends (``scores`` -inf: not one) merged into each
    group's best ``returns`` finished sequences, old ones first among equals."""
    all_scores = tf.concat([state.finished_scores, scores], 1)
    best = tf.math.top_k(all_scores, k=returns).indices  # stable: lower index first
    return state._replace(
        finished_scores=tf.gather(all_scores, best, batch_dims=1),
        finished_history=tf.gather(tf.concat([state.finished_history, history], 1), best,
                                   batch_dims=1),
        finished_length=tf.gather(tf.concat([state.finished_length, length], 1), best,
                                  batch_dims=1))


def _append(history, length, token):
    """``history`` ``(groups, k, width)`` with ``token`` written at ``length``."""
    width = tf.shape(history)[-1]
    at = tf.one_hot(tf.minimum(length, width - 1), width, on_value=True, off_value=False)
    return tf.where(at & (length < width)[..., None], token[..., None], history)


def _reorder(rows, parents, decoder):
    """Each beam becomes a copy of its parent beam ``parents`` (per text), its
    contrast row a copy of the parent's; each contrast row stays its beam's."""
    texts = rows.texts
    # A contrast row's parent: the contrast row of its beam's parent.
    every = tf.concat([parents, tf.gather(rows.partner, tf.gather(parents, rows.partner[texts:]))],
                      0)

    def gather(t):
        return tf.gather(t, every)

    def per_text(t):
        return tf.gather(t, parents)

    return rows._replace(
        scores=per_text(rows.scores), short=(), row_id=per_text(rows.row_id),
        params={k: per_text(v) for k, v in rows.params.items()},
        history=gather(rows.history), length=gather(rows.length),
        prompt_length=gather(rows.prompt_length), norms=gather(rows.norms),
        cache=decoder.reorder(rows.cache, every))
