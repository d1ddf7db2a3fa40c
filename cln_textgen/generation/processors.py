"""Logit processors: what every decoding option does to the next-token logits.

Each processor is one small object that reads its option per text (the
engine's state carries one value per text and option, so texts of one batch
may differ: the server decodes many requests at once) and changes the
``(texts, vocab)`` scores; :data:`PROCESSORS` is the chain, in the order it
runs.  The first, :class:`Guidance`, turns the logits of every row (texts,
then contrast rows) into the texts' scores; the others see the texts only.  The choice of a token from the processed scores (greedy, top-k, top-p,
a draw) is :mod:`cln_textgen.generation.choice`; stopping is the engine's.
A new decoding option is one row in :mod:`cln_textgen.options` and, if it
changes the logits, one processor here.

Processors are TensorFlow functions of tensors: the same code runs eagerly,
inside the XLA-compiled step of the package's loop and inside the exported
SavedModel.  One that no row of the batch uses is skipped (``tf.cond``).
"""

import numpy as np

from cln_textgen.backend import tf

NEG_INF = -np.inf


class Processor:
    """``processor(scores, state, context) -> scores``; ``option`` names the
    option of :mod:`cln_textgen.options` it implements."""

    option = None

    def used(self, state, context):
        """Whether any text needs this processor (a scalar bool tensor)."""
        return tf.constant(True)

    def apply(self, scores, state, context):
        raise NotImplementedError

    def skip(self, scores, state):
        """The scores when no text needs the processor."""
        return scores

    def __call__(self, scores, state, context):
        return tf.cond(self.used(state, context), lambda: self.apply(scores, state, context),
                       lambda: self.skip(scores, state))


class Guidance(Processor):
    """Classifier-free guidance (Ho & Salimans 2022): a guided text is decoded
    beside a contrast row (the null condition, or another label) in the same
    batch; its scores become the log-probabilities ``log p_c + g (log p_text -
    log p_c)``: ``g`` 1 is the text's own distribution, 0 the contrast's, above
    1 pushes away from the contrast.  Unguided texts keep their raw logits.
    Takes the logits of every row, returns the texts' scores."""

    option = "guidance"

    def used(self, state, context):
        return tf.shape(state.done)[0] > state.texts  # any contrast row

    def apply(self, scores, state, context):
        texts = state.texts
        log_probs = tf.nn.log_softmax(scores)
        contrast = tf.gather(log_probs, state.partner[:texts])
        g = tf.cast(state.params["guidance"], scores.dtype)[:, None]
        guided = (state.partner[:texts] != tf.range(texts))[:, None]
        return tf.where(guided, contrast + g * (log_probs[:texts] - contrast), scores[:texts])

    def skip(self, scores, state):
        return scores[:state.texts]


class BannedTokens(Processor):
    """Tokens no text may contain (the special tokens but the end of text),
    and the end of text itself before a row has ``min_new_tokens`` new tokens."""

    option = "min_new_tokens"

    def used(self, state, context):
        return tf.constant(True)

    def apply(self, scores, state, context):
        texts = state.texts
        early = (state.length - state.prompt_length)[:texts] < state.params["min_new_tokens"]
        stop = tf.one_hot(context.stop_id, tf.shape(scores)[1], on_value=True, off_value=False)
        banned = context.banned[None, :] | (early[:, None] & stop[None, :])
        return tf.where(banned, tf.constant(NEG_INF, scores.dtype), scores)


class RepetitionPenalty(Processor):
    """CTRL's penalty (Keskar et al. 2019) on every token the row holds already
    (prompt and new tokens): positive logits are divided by the penalty,
    negative ones multiplied (1.0: off)."""

    option = "repetition_penalty"

    def used(self, state, context):
        return tf.reduce_any(state.params["repetition_penalty"] != 1.0)

    def apply(self, scores, state, context):
        penalty = tf.cast(state.params["repetition_penalty"], scores.dtype)[:, None]
        texts = state.texts
        seen = token_counts(scores, filled(state.history[:texts], state.length[:texts])) > 0
        penalised = tf.where(scores > 0, scores / penalty, scores * penalty)
        return tf.where(seen, penalised, scores)


class NoRepeatNgram(Processor):
    """Forbid every token that would complete an n-gram the row holds already
    (prompt and new tokens); each row has its own n (0: off)."""

    option = "no_repeat_ngram"

    def used(self, state, context):
        return tf.reduce_any(state.params["no_repeat_ngram"] > 0)

    def apply(self, scores, state, context):
        texts = state.texts
        history, length = state.history[:texts], state.length[:texts]
        n = state.params["no_repeat_ngram"]
        width = tf.shape(history)[1]
        starts = tf.range(width)[None, :]  # where each window of a row begins
        # The token completing each window, and whether that window lies in
        # the row's history.
        ends = _shifted(history, n - 1)
        match = (starts + n[:, None] - 1 < length[:, None]) & (ends >= 0) & (n[:, None] > 0)

        # Window position j must equal the row's j-th last-but-(n-1) token.
        def compare(j, match):
            wanted = tf.gather(history, tf.maximum(length - (n - 1) + j, 0), batch_dims=1)
            window = _shifted(history, tf.zeros_like(n) + j)
            same = (window == wanted[:, None]) & (window >= 0)
            return j + 1, tf.ensure_shape(match & (same | (j >= n - 1)[:, None]), match.shape)

        _, match = tf.while_loop(lambda j, _: j < tf.reduce_max(n) - 1, compare, (0, match))
        banned = token_counts(scores, tf.where(match, ends, -1)) > 0
        return tf.where(banned, tf.constant(NEG_INF, scores.dtype), scores)


class Temperature(Processor):
    """Divide the scores by the row's temperature."""

    option = "temperature"

    def used(self, state, context):
        return tf.reduce_any(state.params["temperature"] != 1.0)

    def apply(self, scores, state, context):
        return scores / tf.cast(state.params["temperature"], scores.dtype)[:, None]


# The chain, in order: guidance first (it turns logits into log-probabilities),
# temperature last (after the bans and penalties, as the samplers always did).
PROCESSORS = (Guidance(), BannedTokens(), RepetitionPenalty(), NoRepeatNgram(), Temperature())


def process(scores, state, context):
    """``scores`` after every processor of the chain."""
    for processor in PROCESSORS:
        scores = processor(scores, state, context)
    return scores


def filled(history, length):
    """``history`` with every column at or past each row's ``length`` set to -1."""
    return tf.where(tf.range(tf.shape(history)[1])[None, :] < length[:, None], history, -1)


def token_counts(scores, ids):
    """``(rows, vocab)`` counts of the ids >= 0 in each row of ``ids``."""
    rows = tf.broadcast_to(tf.range(tf.shape(ids)[0])[:, None], tf.shape(ids))
    valid = ids >= 0
    indices = tf.stack([rows, tf.where(valid, ids, 0)], axis=-1)
    return tf.scatter_nd(indices, tf.cast(valid, scores.dtype), tf.shape(scores))


def _shifted(history, offsets):
    """``out[r, s] = history[r, s + offsets[r]]`` (-1 past the end)."""
    width = tf.shape(history)[1]
    index = tf.range(width)[None, :] + offsets[:, None]
    inside = (index >= 0) & (index < width)
    return tf.where(inside, tf.gather(history, tf.clip_by_value(index, 0, width - 1),
                                      batch_dims=1), -1)
