"""The one decoding loop: every surface (CLI, API, server, SavedModel) runs it.

A batch is a :class:`DecodeState`.  Its first rows are *main* rows, one per
text: each has its own value of every decoding option (``params``: the
per-row options of :mod:`cln_textgen.options`), its seed stream and the
processed scores of its next token.  After them come the *contrast* rows of
guided texts: a guided text is decoded beside a row conditioned on what
guidance pushes away from (the null condition, or another label), fed the
same tokens (see :class:`~cln_textgen.generation.processors.Guidance`).
Every row, main or contrast, has its history (prompt and new tokens), its
place in its own cache row and its condition's norm offsets.

:meth:`Engine.step` takes one token for every live text: it chooses from the
scores (:func:`~cln_textgen.generation.choice.choose`), appends the token,
feeds it to the model (:meth:`~cln_textgen.generation.decoder.CachedDecoder.step`)
and processes the next logits (:mod:`~cln_textgen.generation.processors`).
:func:`loop` repeats a step until every row is done: a ``tf.while_loop``
inside a graph (the exported SavedModel), the same loop in Python when
eager, where ``on_step`` may stream the new tokens and add or drop rows
between steps (the server's continuous batching).  Beam search
(:mod:`~cln_textgen.generation.beams`) runs on the same loop with a step of
its own over the same forward pass and processors.

When eager, the bookkeeping, the forward pass and the processors of a step
are XLA-compiled (1.6-1.7x the tokens/s of a plain ``tf.function`` on CPU),
called by a plain function that first makes the choice: random numbers are
never drawn inside XLA (see :mod:`~cln_textgen.generation.choice`).
"""

import dataclasses
from typing import NamedTuple

import numpy as np

from cln_textgen import options as table
from cln_textgen.backend import tf
from cln_textgen.generation.choice import choose, row_seeds, shortlist
from cln_textgen.generation.decoder import right_pad, widths
from cln_textgen.generation.lru import Bounded
from cln_textgen.generation.processors import process

_DTYPES = {int: tf.int32, float: tf.float32, bool: tf.bool}


class DecodeState(NamedTuple):
    """A batch being decoded: ``texts`` main rows, then contrast rows."""

    # One entry per main row (per text):
    scores: object  # (texts, vocab) processed scores of the next token
    short: tuple  # their shortlist: (values, ids) of the highest, sorted (choice.shortlist)
    params: dict  # option name -> (texts,) tensor: the per-row options
    row_id: object  # (texts,) int32: the text's number in its request (its seed stream)
    # One entry per row, main or contrast:
    history: object  # (rows, width) int32: prompt then new tokens, -1 past `length`
    length: object  # (rows,) int32: tokens in history; also the next cache column
    prompt_length: object  # (rows,) int32
    done: object  # (rows,) bool
    last: object  # (rows,) int32: the token taken at the last step, -1 if none
    partner: object  # (rows,) int32: a text's contrast row (itself if unguided); a contrast row's text
    norms: object  # (rows, norms, 2, hidden): each norm's gamma and beta for the row
    cache: object  # (2, layers, rows, columns, heads, size): every layer's keys and values

    @property
    def texts(self):
        """The number of main rows (a tensor)."""
        return tf.shape(self.row_id)[0]


class Context(NamedTuple):
    """What is the same for every row of a model: the end of text, and the
    tokens no text may hold."""

    stop_id: int
    banned: object  # (vocab,) bool


@dataclasses.dataclass
class Row:
    """One text to decode: its prompt ids (``[CLS]`` first), its condition (a
    label id or a mix, see :func:`~cln_textgen.generation.decoder.condition_weights`),
    its options (their per-row fields are read), its number in its request,
    and the condition guidance contrasts it with (``None``: unguided)."""

    prompt: list
    condition: object
    options: object
    row_id: int
    contrast: object = None


def params_of(rows_options):
    """``{name: (rows,) tensor}`` of every per-row option, from one options
    object (or dict) per row."""
    def value(options, name):
        return options[name] if isinstance(options, dict) else getattr(options, name)

    return {o.name: tf.constant([value(opts, o.name) for opts in rows_options], _DTYPES[o.type])
            for o in table.ROW_OPTIONS}


def of_every_row(state, values):
    """Per-text ``values`` ``(texts, ...)`` for every row: a contrast row takes its text's."""
    return tf.concat([values, tf.gather(values, state.partner[state.texts:])], 0)


class Engine:
    """The decoding loop over one model's :class:`CachedDecoder`."""

    # Batch shapes whose compiled step is kept (the server meets a few row
    # and length buckets; a generator meets what its calls ask).
    _KEEP_STEPS = 16

    def __init__(self, decoder, stop_id, banned_ids=(), jit_compile=True):
        self.decoder = decoder
        self.jit_compile = jit_compile
        banned = np.zeros(decoder.vocab_size, bool)
        banned[list(banned_ids)] = True
        self.context = Context(int(stop_id), tf.constant(banned))
        self._steps = Bounded(self._KEEP_STEPS)
        self._start = tf.function(self._start_impl, reduce_retracing=True)

    # ------------------------------------------------------------ a new batch

    def start(self, rows):
        """A :class:`DecodeState` for ``rows`` (:class:`Row`), prompts run.
        Guided rows get their contrast rows after all of them."""
        rows = list(rows)
        guided = [i for i, row in enumerate(rows) if row.contrast is not None]
        partner = list(range(len(rows))) + guided
        for k, i in enumerate(guided):
            partner[i] = len(rows) + k
        every = rows + [dataclasses.replace(rows[i], condition=rows[i].contrast)
                        for i in guided]
        for row in rows:
            self.decoder.check_positions(len(row.prompt), row.options.max_new_tokens)
        tokens, lengths = right_pad([row.prompt for row in every], 0)
        needed = max(len(r.prompt) + r.options.max_new_tokens for r in every)
        return self.begin(
            tf.constant(tokens), tf.constant(lengths), needed,
            tf.constant(self.decoder.condition_weights([r.condition for r in every])),
            params_of([r.options for r in rows]),
            tf.constant([r.row_id for r in rows], tf.int32), tf.constant(partner, tf.int32))

    def begin(self, tokens, lengths, needed, weights, params, row_id, partner):
        """The :class:`DecodeState` of rows given as tensors (the exported graph
        builds them; :meth:`start` from :class:`Row` objects): every row's
        right-padded prompt ``tokens`` of ``lengths`` tokens, condition
        ``weights`` and ``partner``; the texts' ``params`` (see
        :func:`params_of`) and ``row_id``; the most tokens a row may hold
        (``needed``, prompt and new ones: the history and cache widths, see
        :func:`~cln_textgen.generation.decoder.widths`).  The prompts are run."""
        rows = tf.shape(tokens)[0]
        width, cache_width = widths(needed)
        history = tf.where(tf.range(tf.shape(tokens)[1])[None, :] < lengths[:, None], tokens, -1)
        history = tf.pad(history, [[0, 0], [0, width - tf.shape(tokens)[1]]], constant_values=-1)
        state = DecodeState(
            scores=None, short=None, params=params, row_id=row_id, history=history,
            length=lengths, prompt_length=lengths, done=tf.zeros([rows], tf.bool),
            last=tf.fill([rows], -1), partner=partner, norms=None,
            cache=self.decoder.empty_cache(rows, cache_width, variable=tf.executing_eagerly()))
        return attached(self._start(state, tokens, weights), state.cache)

    def _start_impl(self, state, tokens, weights):
        norms = self.decoder.norms(weights)
        logits, cache = self.decoder.prefill(tokens, state.prompt_length, norms, state.cache)
        state = state._replace(norms=norms, cache=cache)
        scores = process(logits, state, self.context)
        return detached(state._replace(scores=scores, short=tuple(shortlist(scores))))

    # ------------------------------------------------------------ the loop

    def run(self, state, on_step=None):
        """Step until every row is done (see :func:`loop`)."""
        return loop(self, state, on_step)

    @staticmethod
    def running(state):
        return tf.reduce_any(~state.done)

    def step(self, state):
        """One token for every live text."""
        if not tf.executing_eagerly():
            return self._advance(state, self._choose(state))
        shape = (*state.history.shape, state.cache.shape[3], state.row_id.shape[0],
                 isinstance(state.cache, tf.Variable))
        # One call per step: a plain function that chooses, then runs the
        # compiled rest; concrete per batch shape, so that a call skips
        # matching its inputs' types against every trace.
        return attached(self._steps.get(shape, lambda: self._compile_step(state))(state),
                        state.cache)

    def _compile_step(self, state):
        advance = tf.function(self._advance, jit_compile=self.jit_compile)
        return tf.function(lambda s: advance(s, self._choose(s))).get_concrete_function(state)

    @staticmethod
    def _choose(state):
        """Each text's next token (``(texts,)``)."""
        params = state.params
        generated = (state.length - state.prompt_length)[:state.texts]
        seeds = row_seeds(params["seed"], state.row_id, generated)
        return choose(state.scores, state.short, params["greedy"], params["top_k"],
                      params["top_p"], seeds)

    def _advance(self, state, chosen):
        """Append each text's ``chosen`` token to its live rows, feed it and
        process the next logits."""
        context = self.context
        chosen = of_every_row(state, chosen)
        rows = tf.range(tf.shape(chosen)[0])
        live = ~state.done
        generated = state.length - state.prompt_length + 1
        limit = of_every_row(state, state.params["max_new_tokens"])
        ended = live & ((chosen == context.stop_id) | (generated >= limit))
        width = tf.shape(state.history)[1]
        slots = tf.stack([rows, tf.minimum(state.length, width - 1)], axis=1)
        kept = tf.gather_nd(state.history, slots)
        history = tf.tensor_scatter_nd_update(state.history, slots,
                                              tf.where(live, chosen, kept))
        state = state._replace(history=history, length=state.length + tf.cast(live, tf.int32),
                               done=state.done | ended, last=tf.where(live, chosen, -1))

        # Fed even after the last row is done (one wasted step per batch): a
        # step inside tf.cond measured slower than the waste.
        feed = tf.where(state.done, context.stop_id, chosen)
        logits, cache = self.decoder.step(feed, state.length - 1, state.norms, state.cache)
        scores = process(logits, state._replace(cache=cache), context)
        return detached(state._replace(scores=scores, short=tuple(shortlist(scores)),
                                       cache=cache))

    # ------------------------------------------------------------ results

    @staticmethod
    def new_tokens(state, stop_id):
        """Every text's new ids (without the end of text), in row order."""
        history, length, start = (t.numpy() for t in (state.history, state.length,
                                                      state.prompt_length))
        out = []
        for row in range(int(state.texts)):
            ids = history[row, start[row]:length[row]].tolist()
            out.append(ids[:-1] if ids and ids[-1] == stop_id else ids)
        return out


# A compiled function must not return the cache variable: its output would be
# a copy of the variable's value.  It returns the state without it, and the
# caller puts the variable back.

def detached(state):
    return state._replace(cache=()) if isinstance(state.cache, tf.Variable) else state


def attached(state, cache):
    return state._replace(cache=cache) if isinstance(cache, tf.Variable) else state


def loop(search, state, on_step=None):
    """The loop: ``search.step(state)`` while ``search.running(state)``.  Inside
    a graph a ``tf.while_loop``; eager, the same loop in Python, where
    ``on_step(state)`` after each step may return a new state (stream the new
    tokens, add or drop rows).  ``search`` is an :class:`Engine` (sampling)
    or a :class:`~cln_textgen.generation.beams.BeamSearch`."""
    if not tf.executing_eagerly():
        return tf.while_loop(search.running, lambda s: (search.step(s),), (state,))[0]
    while bool(search.running(state)):
        state = search.step(state)
        if on_step is not None:
            state = on_step(state)
    return state
