"""Samplers: small objects that choose the next token, on one decoding loop.

:class:`Sampler` runs the loop over a :class:`~cln_textgen.generation.decoder.CachedDecoder`
and applies what every strategy shares (banned tokens, the minimum length,
the CTRL repetition penalty, no-repeat n-grams, temperature); a subclass only
says how to pick a token from the processed logits (``get_next_token``).
:class:`~cln_textgen.generation.beams.BeamSampler` replaces the loop, since it
keeps scored hypotheses.  Guidance (:func:`guide`) decodes each row beside a
contrast row in the same batch and combines their log-probabilities before
any of this.

The logit work runs as TensorFlow ops, so only the chosen ids reach Python.
Samplers whose choice XLA compiles well (greedy, top-k: a draw among k
values) run inside the decoder's compiled step; the others (a draw over, or
a sort of, the whole vocabulary, which XLA on CPU does 4-10x slower than
TensorFlow's kernels) in a ``tf.function`` of their own after it.
Randomness is stateless and per row: row ``r`` draws its step ``s`` from the
seed ``(seed, r, s)``, whatever else is in the batch, so the same seed and
inputs give the same tokens, and a request decoded in chunks gives what it
gives in one batch.  The random numbers are never drawn inside XLA, which
draws other numbers than TensorFlow's kernels for the same seed: a step
compiled by XLA hands its shortlist (the top k) to a plain function that
draws, so XLA, a plain step and the exported SavedModel (whose graph uses the
functions below) choose the same tokens.
"""

import numpy as np

from cln_textgen import options as table
from cln_textgen.backend import tf
from cln_textgen.generation.choice import (draw_among, gumbel_draw, mask_tokens, row_seeds,
                                          top_k_draw, top_k_shortlist, top_p_draw,
                                          top_p_shortlist)
from cln_textgen.generation.decoder import _LENGTH_BUCKET, left_pad


def apply_repetition_penalty(logits, history, length, penalty):
    """CTRL's penalty (Keskar et al. 2019) on every token in ``history[:, :length]``:
    positive logits are divided by ``penalty``, negative ones multiplied.
    ``history`` is ``(rows, columns)`` int32 with -1 where there is no token."""
    filled = tf.range(history.shape[1])[None, :] < length
    seen = _token_counts(logits, tf.where(filled, history, -1)) > 0
    penalised = tf.where(logits > 0, logits / penalty, logits * penalty)
    return tf.where(seen, penalised, logits)


def ban_repeated_ngrams(logits, history, length, n):
    """Forbid every token that would complete an n-gram already present in
    ``history[:, :length]`` (the row's prompt and its generated tokens)."""
    starts = history.shape[1] - n + 1
    ends = history[:, n - 1:n - 1 + starts]  # the token that completes each window
    match = (tf.range(starts)[None, :] + n - 1 < length) & (ends >= 0)
    for j in range(n - 1):
        # the last n-1 tokens, one column at a time, against every window
        suffix = tf.gather(history, tf.maximum(length - (n - 1) + j, 0), axis=1)
        window = history[:, j:j + starts]
        match &= (window == suffix[:, None]) & (window >= 0)
    banned = _token_counts(logits, tf.where(match, ends, -1)) > 0
    return tf.where(banned, tf.constant(-np.inf, logits.dtype), logits)


def _token_counts(logits, ids):
    """``(rows, vocab)`` counts of the ids >= 0 in each row of ``ids``."""
    rows = tf.broadcast_to(tf.range(tf.shape(ids)[0])[:, None], tf.shape(ids))
    valid = ids >= 0
    indices = tf.stack([rows, tf.where(valid, ids, 0)], axis=-1)
    return tf.scatter_nd(indices, tf.cast(valid, logits.dtype), tf.shape(logits))


def guide(logits, guidance):
    """Classifier-free guidance (Ho & Salimans 2022) on ``(2 r, vocab)`` logits:
    the ``r`` conditioned rows first, then their contrast rows (the null
    condition, or another label).  Returns ``(r, vocab)`` guided log-probabilities
    ``log p_c + g * (log p_label - log p_c)``: ``g`` 1 is the label's own
    distribution, 0 the contrast's, above 1 pushes away from the contrast."""
    label, contrast = tf.split(tf.nn.log_softmax(logits), 2)
    return contrast + tf.cast(guidance, logits.dtype) * (label - contrast)


class Sampler:
    """Base sampler: runs the loop; subclasses implement ``get_next_token``.

    ``repetition_penalty`` 1.0 and ``no_repeat_ngram`` 0 are off.
    """

    # Whether the choice is compiled into the decoder's step (see the module
    # doc); for a sampler that draws at random, only its shortlist is.
    in_step = False
    draws = True

    def __init__(self, temperature=1.0, repetition_penalty=1.0, no_repeat_ngram=0, seed=0):
        _check(temperature=temperature, repetition_penalty=repetition_penalty,
               no_repeat_ngram=no_repeat_ngram, seed=seed)
        self.temperature = float(temperature)
        self.repetition_penalty = float(repetition_penalty)
        self.no_repeat_ngram = int(no_repeat_ngram)
        self.seed = int(seed)
        self._choose = tf.function(self._choose_in_step)
        self._choose_guided = tf.function(self._choose_guided_in_step)
        self._draw = tf.function(draw_among)

    def process(self, logits, history, length, banned):
        """Logits with everything but the choice applied: ``banned`` ``(vocab,)``
        bool mask, repetition penalty, n-gram bans, then temperature."""
        logits = mask_tokens(logits, banned)
        if self.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, history, length, self.repetition_penalty)
        if self.no_repeat_ngram:
            logits = ban_repeated_ngrams(logits, history, length, self.no_repeat_ngram)
        return logits / self.temperature

    def get_next_token(self, logits, seed):
        """``(rows,)`` int32 ids chosen from processed ``(rows, vocab)`` logits;
        ``seed`` is a ``(rows, 2)`` integer tensor, each row's stateless seed."""
        raise NotImplementedError

    def shortlist(self, logits):
        """``(values, ids)``: the processed logits a draw chooses among, and
        their token ids; what a sampler that draws computes inside the step."""
        raise NotImplementedError

    def _choose_in_step(self, logits, history, length, banned, seed):
        return self.get_next_token(self.process(logits, history, length, banned), seed)

    def _shortlist_in_step(self, logits, history, length, banned):
        return self.shortlist(self.process(logits, history, length, banned))

    def _choose_guided_in_step(self, logits, guidance, *args):
        return self._choose_in_step(guide(logits, guidance), *args)

    def _shortlist_guided_in_step(self, logits, guidance, *args):
        return self._shortlist_in_step(guide(logits, guidance), *args)

    def __call__(self, decoder, prompts, label_ids, *, stop_id, banned_ids=(),
                 max_new_tokens=64, min_new_tokens=0, num_return=1, on_token=None, seed=None,
                 row_ids=None, guidance=1.0, contrast=None):
        """Generate from each prompt (a list of ids) with its label (an id or a
        mix: see :func:`~cln_textgen.generation.decoder.condition_weights`).

        Returns ``len(prompts) * num_return`` lists of new ids (without the
        stop id), ``num_return`` consecutive ones per prompt.  ``on_token(row,
        id)`` is called with each new id as soon as it is chosen, then once
        with ``id=None`` when that row is done; ``row`` indexes the result.
        ``seed`` (default: the sampler's own) reaches the compiled step as a
        tensor, so one sampler serves every seed without tracing again;
        ``row_ids`` (default 0, 1, ...) number the returned rows for their
        seeds: a row draws the same tokens whatever other rows it is with.
        ``guidance`` other than 1 guides every row away from the condition
        ``contrast`` (see :func:`guide`): each row is decoded beside a copy
        conditioned on ``contrast``, in the same batch and cache.
        """
        seed = self.seed if seed is None else int(seed)
        prompts = [list(p) for p in prompts for _ in range(num_return)]
        row_ids = np.arange(len(prompts)) if row_ids is None else np.asarray(row_ids)
        labels = [label for label in label_ids for _ in range(num_return)]
        if max_new_tokens <= 0:
            return [[] for _ in prompts]
        guided = _guided(guidance, contrast)
        if guided:
            state, logits = decoder.start(prompts * 2, labels + [contrast] * len(labels),
                                          max_new_tokens)
            choose, choose_in_step, shortlist_in_step = (
                self._choose_guided, self._choose_guided_in_step, self._shortlist_guided_in_step)
            guiding = (tf.constant(guidance, tf.float32),)
        else:
            state, logits = decoder.start(prompts, labels, max_new_tokens)
            choose, choose_in_step, shortlist_in_step = (
                self._choose, self._choose_in_step, self._shortlist_in_step)
            guiding = ()
        history, start = _history(prompts, max_new_tokens)
        masks = _ban_masks(decoder.vocab_size, banned_ids, stop_id)
        finished = np.zeros(len(prompts), bool)
        generated = [[] for _ in prompts]
        for step in range(max_new_tokens):
            args = guiding + (tf.constant(history), tf.constant(start + step),
                              masks[step < min_new_tokens],
                              tf.constant(row_seeds(seed, row_ids, step)))
            if step == 0:
                chosen = choose(logits, *args).numpy()
            else:
                # Finished rows are fed the stop id and their logits ignored:
                # one fixed batch shape keeps the compiled step.
                feed = np.where(finished, stop_id, chosen)
                feed = np.concatenate([feed, feed]) if guided else feed
                if self.in_step and self.draws:
                    values, ids = decoder.step(state, feed, shortlist_in_step, args[:-1])
                    chosen = self._draw(values, ids, args[-1]).numpy()
                elif self.in_step:
                    chosen = decoder.step(state, feed, choose_in_step, args).numpy()
                else:
                    chosen = choose(decoder.step(state, feed), *args).numpy()
            history[:, start + step] = np.where(finished, -1, chosen)
            for row in np.flatnonzero(~finished).tolist():
                token = int(chosen[row])
                if token == stop_id:
                    finished[row] = True
                    token = None
                else:
                    generated[row].append(token)
                if on_token:
                    on_token(row, token)
            if finished.all():
                break
        if on_token:
            for row in np.flatnonzero(~finished).tolist():
                on_token(row, None)
        return generated


def _guided(guidance, contrast):
    """Whether decoding is guided; guidance without a contrast is a caller's bug."""
    if guidance == 1.0:
        return False
    if contrast is None:
        raise ValueError(f"guidance {guidance} needs a contrast condition")
    return True


def _history(prompts, max_new_tokens):
    """Every row's ids in cache-column order (-1: none yet), and the first new column.
    The width is rounded up as the cache's is, so that the compiled choice
    sees few distinct shapes."""
    history, _ = left_pad(prompts, -1)
    start = history.shape[1]
    width = -(-(start + max_new_tokens) // _LENGTH_BUCKET) * _LENGTH_BUCKET
    history = np.concatenate([history, np.full((len(prompts), width - start), -1, np.int32)], 1)
    return history, start


def _check(**values):
    """The table's rule for each option given (cln_textgen.options), as ValueError."""
    for name, value in values.items():
        broken = table.check(name, value)
        if broken:
            raise ValueError(f"{name} {broken}, got {value!r}")


def _ban_masks(vocab_size, banned_ids, stop_id):
    """``(after the minimum length, before it)``: the second also bans the stop id."""
    mask = np.zeros(vocab_size, bool)
    mask[list(banned_ids)] = True
    early = mask.copy()
    early[stop_id] = True
    return tf.constant(mask), tf.constant(early)


class GreedySampler(Sampler):
    """The most likely token."""

    in_step = True
    draws = False

    def get_next_token(self, logits, seed):
        return tf.argmax(logits, axis=-1, output_type=tf.int32)


class RandomSampler(Sampler):
    """A draw from the whole (temperature-scaled) distribution."""

    def get_next_token(self, logits, seed):
        return gumbel_draw(logits, seed)


class TopKSampler(Sampler):
    """A draw among the ``k`` most likely tokens."""

    in_step = True

    def __init__(self, k=10, **kwargs):
        super().__init__(**kwargs)
        if k < 1:
            raise ValueError(f"top-k needs k >= 1, got {k}")
        self.k = int(k)

    def shortlist(self, logits):
        return top_k_shortlist(logits, self.k)

    def get_next_token(self, logits, seed):
        return top_k_draw(logits, self.k, seed)


class TopPSampler(Sampler):
    """Nucleus sampling: a draw among the fewest most likely tokens whose
    probability reaches ``p`` (Holtzman et al. 2019).

    With ``k``, the distribution is first cut to the top ``k`` and
    renormalised (top-k then top-p).  Without it the nucleus is still found
    exactly, but from a partial sort: 64 then 1024 candidates are tried before
    the whole vocabulary, since sorting 21k logits per row costs more than the
    model step itself.
    """

    def __init__(self, p=0.9, k=None, **kwargs):
        super().__init__(**kwargs)
        _check(top_p=p)
        self.p = float(p)
        self.k = None if k is None else int(k)
        self.in_step = k is not None  # without k, a full sort may be needed

    def shortlist(self, logits):
        return top_p_shortlist(logits, self.p, self.k)

    def get_next_token(self, logits, seed):
        if self.k is not None:
            return draw_among(*self.shortlist(logits), seed)
        return top_p_draw(logits, self.p, seed)
