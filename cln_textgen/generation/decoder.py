"""Incremental decoding of a model from :func:`cln_textgen.model.modeling.build_model`.

The model is causal (lower-triangular attention), so the keys and values of a
position never change once computed: a key/value cache makes decoding exact
while feeding one new token per step.  :class:`CachedDecoder` runs the same
forward pass as the Keras model, written out over the model's own weights
(the layers' variables are read directly, so a model still training decodes
with its current weights), with three savings:

* the conditional LayerNorm gamma/beta of every norm are computed once per
  row when decoding starts, not once per token;
* the MLM head and the vocabulary projection run on the last position only;
* one step is one compiled call; the cache lives in variables that the step
  updates in place.

The forward pass itself (:meth:`CachedDecoder.forward`) takes the cache
update as a function, so the same code also runs on a cache held in tensors:
the exported SavedModel's decoding loop (:mod:`cln_textgen.export`) carries
it through a ``tf.while_loop``.

Everything runs in float32 from the variables, whatever precision policy the
model was built under.

Rows of different prompt lengths share one batch by left padding: row ``b``
has ``pads[b]`` pad columns, its position ids start at 0 on its first real
token, and pad columns are masked out of every attention, so each row gets
exactly the logits it would get alone.
"""

import functools

import numpy as np

from cln_textgen.backend import tf
from cln_textgen.errors import UserError
from cln_textgen.generation.bounded import Bounded
from cln_textgen.model.modeling import model_parts

# Masked attention scores.  Finite on purpose: a pad column has no key to
# attend to, and -inf there would give NaN states that 0 * NaN spreads into
# real rows; exp(-1e9 - max) is exactly 0 in float32, as exp(-inf) is.
_MASKED = -1e9
# Cache lengths are rounded up to this multiple so that nearby prompt and
# generation lengths reuse one compiled step instead of compiling again.
_LENGTH_BUCKET = 16


def condition_weights(conditions, size):
    """``(rows, size)`` float32 weights over the label embedding's rows, one row
    per condition: a label id (weight 1 on it) or a mix, ``((id, weight), ...)``.
    A one-hot row picks its label's embedding exactly, as a gather would."""
    weights = np.zeros((len(conditions), size), np.float32)
    for row, condition in enumerate(conditions):
        for label, weight in ((condition, 1.0),) if np.isscalar(condition) else condition:
            weights[row, int(label)] += weight
    return weights


def left_pad(prompts, value):
    """``(rows, longest)`` int32 array of ``prompts`` padded on the left, and the
    number of pad columns of each row."""
    longest = max(len(p) for p in prompts)
    out = np.full((len(prompts), longest), value, np.int32)
    pads = np.array([longest - len(p) for p in prompts], np.int32)
    for row, prompt in enumerate(prompts):
        out[row, pads[row]:] = prompt
    return out, pads


class DecodeState:
    """The cache of one decoding run and what every step needs besides a token.

    ``keys``/``values``: one ``(rows, length, heads, head_size)`` variable per
    layer; ``pads``: pad columns per row; ``norms``: ``(gamma, beta)`` per
    norm layer for these rows; ``index``: the next cache column to write.
    """

    def __init__(self, keys, values, pads, norms, index):
        self.keys = keys
        self.values = values
        self.pads = pads
        self.norms = norms
        self.index = index

    @property
    def length(self):
        return int(self.keys[0].shape[1])


class CachedDecoder:
    """Key/value-cached forward pass of a conditional LM built by ``build_model``.

    ``start`` runs the prompts once and returns the logits of the next token;
    each ``step`` feeds one token per row and returns the next logits.  With
    ``jit_compile`` the step is compiled by XLA: 1.6-1.7x more tokens/s on
    CPU than a plain ``tf.function`` (scripts/bench_decode.py), for a compile
    of a few seconds per batch shape.  The prompt pass is a plain
    ``tf.function``: it runs once per call and would otherwise compile once
    per prompt length.

    Compiled functions belong to the instance and are keyed by the cache
    shape ``(rows, length)`` they run on, so a call of one shape never reuses
    a trace made for another; the most recent few shapes are kept.
    """

    # Cache shapes whose compiled functions are kept, and `then` functions
    # (samplers' choices) per shape.
    _KEEP_SHAPES = 6
    _KEEP_STEPS = 4

    def __init__(self, model, jit_compile=True):
        self.jit_compile = jit_compile
        self.parts = model_parts(model)
        self.num_layers = len(self.parts.blocks)
        self.norm_layers = self.parts.norms()  # in the order the forward pass meets them
        self.heads, self.key_size, self.head_size = (self.parts.heads, self.parts.key_size,
                                                     self.parts.head_size)
        self.vocab_size = self.parts.vocab_size
        self.max_position = self.parts.max_position
        self._compiled = Bounded(self._KEEP_SHAPES)
        self._norms = tf.function(self._norm_offsets, reduce_retracing=True)

    def compiled(self, rows, length):
        """The functions for a cache of ``(rows, length)``: the prompt pass
        (any prompt length), the steps by ``then``, the beam reorder."""
        def make():
            return {"prefill": tf.function(self._forward, reduce_retracing=True),
                    "gather": tf.function(self._reorder),
                    "steps": Bounded(self._KEEP_STEPS)}
        return self._compiled.get((rows, length), make)

    def start(self, prompts, conditions, max_new_tokens):
        """Run ``prompts`` (lists of ids, ``[CLS]`` first) for rows conditioned on
        ``conditions`` (label ids or mixes, see :func:`condition_weights`);
        returns ``(state, logits)``, logits ``(rows, vocab)`` of the first new
        token.  The cache holds ``max_new_tokens`` more tokens."""
        tokens, pads = left_pad(prompts, 0)
        rows, prompt_length = tokens.shape
        # The last new token is never fed; the longest row has no padding.
        needed = prompt_length + max(max_new_tokens - 1, 0)
        if needed > self.max_position:
            raise UserError(f"the prompt and max_new_tokens={max_new_tokens} need {needed} "
                            f"positions but the model has {self.max_position}; shorten the "
                            "prompt or lower max_new_tokens")
        length = -(-needed // _LENGTH_BUCKET) * _LENGTH_BUCKET
        keys = [tf.Variable(tf.zeros((rows, length, self.heads, self.key_size)), trainable=False)
                for _ in range(self.num_layers)]
        values = [tf.Variable(tf.zeros((rows, length, self.heads, self.head_size)), trainable=False)
                  for _ in range(self.num_layers)]
        # An unconditional model ignores the condition: any weights will do.
        weights = (condition_weights(conditions, self.condition_rows) if self.condition_rows
                   else np.zeros((rows, 1), np.float32))
        state = DecodeState(keys, values, tf.constant(pads), self._norms(tf.constant(weights)), 0)
        prefill = self.compiled(rows, length)["prefill"]
        logits = prefill(tf.constant(tokens), tf.constant(0), state.pads, state.norms, keys, values)
        state.index = prompt_length
        return state, logits

    def step(self, state, token_ids, then=None, then_args=()):
        """Feed one token per row (``(rows,)``); returns the next ``(rows, vocab)`` logits.

        With ``then``, returns ``then(logits, *then_args)`` computed inside the
        same compiled call instead: a sampler's choice then needs no call of
        its own and only its result leaves the step (13 % faster per token
        with top-k on CPU).  ``then`` is traced once per function, so pass a
        long-lived one such as a sampler's method.
        """
        if state.index >= state.length:
            raise ValueError("the cache is full: start() was given fewer max_new_tokens")
        compiled = self.compiled(int(state.keys[0].shape[0]), state.length)["steps"].get(
            then, lambda: tf.function(functools.partial(self._forward, then=then),
                                      jit_compile=self.jit_compile))
        tokens = tf.reshape(tf.cast(token_ids, tf.int32), (-1, 1))
        out = compiled(tokens, tf.constant(state.index, tf.int32), state.pads,
                       state.norms, state.keys, state.values, *then_args)
        state.index += 1
        return out

    def reorder(self, state, rows):
        """Make row ``i`` of the cache a copy of row ``rows[i]`` (beam search)."""
        self.compiled(len(rows), state.length)["gather"](
            tf.constant(np.asarray(rows, np.int32)), state.keys, state.values)

    @property
    def condition_rows(self):
        """Rows of the label embedding (the labels, then the null condition if
        any); 0 for an unconditional model."""
        embedding = self.parts.label_embedding
        return 0 if embedding is None else int(embedding.input_dim)

    def _norm_offsets(self, weights):
        cond = None
        if self.parts.label_embedding is not None:
            cond = tf.matmul(weights, self.parts.label_embedding.embeddings)
        return tuple(layer.condition_offsets(cond, rank=3) for layer in self.norm_layers)

    @staticmethod
    def _reorder(rows, keys, values):
        for variable in list(keys) + list(values):
            variable.assign(tf.gather(variable, rows))

    def _forward(self, tokens, start, pads, norms, keys, values, *then_args, then=None):
        """Feed ``tokens`` ``(rows, s)`` into cache columns ``start .. start+s-1`` of
        the variable cache; returns the logits after the last of them, or
        ``then`` of them."""
        x, _, _ = self.forward(tokens, start, pads, norms, keys, values, write=assign_slots)
        logits = self.logits(x[:, -1:], norms)[:, 0]
        return logits if then is None else then(logits, *then_args)

    def forward(self, tokens, start, pads, norms, keys, values, write):
        """The transformer layers over ``tokens`` ``(rows, s)`` at cache columns
        ``start .. start+s-1``: ``(hidden states (rows, s, hidden), keys, values)``.

        ``write(cache, slots, new)`` puts a layer's new keys (or values) into
        its cache and returns the cache to attend over: :func:`assign_slots`
        for the variables of :meth:`start`, :func:`updated_slots` for tensors
        (a ``tf.while_loop`` carrying the cache, as the exported graph does),
        whose updated caches are then returned.
        """
        rows, steps = tf.shape(tokens)[0], tf.shape(tokens)[1]
        length = tf.shape(keys[0])[1]
        columns = start + tf.range(steps)
        positions = tf.maximum(columns[None, :] - pads[:, None], 0)
        # (rows, s, length): a query sees real keys up to its own column.
        key_columns = tf.range(length)[None, None, :]
        visible = ((key_columns <= columns[None, :, None])
                   & (key_columns >= pads[:, None, None]))
        bias = tf.where(visible, 0.0, _MASKED)[:, None]  # broadcast over heads
        # Where each new key/value goes in the cache: (rows, s, 2) indices.
        slots = tf.stack([tf.broadcast_to(tf.range(rows)[:, None], (rows, steps)),
                          tf.broadcast_to(columns[None, :], (rows, steps))], axis=-1)

        parts = self.parts
        x = tf.gather(parts.token_embedding.embeddings, tokens) + tf.gather(
            parts.position_embedding.embeddings, positions)
        x = self._norm(0, x, norms)
        keys, values = list(keys), list(values)
        for i, block in enumerate(parts.blocks):
            q = tf.reshape(_dense(block.query, x), (rows, steps, self.heads, self.key_size))
            k = tf.reshape(_dense(block.key, x), (rows, steps, self.heads, self.key_size))
            v = tf.reshape(_dense(block.value, x), (rows, steps, self.heads, self.head_size))
            keys[i] = write(keys[i], slots, k)
            values[i] = write(values[i], slots, v)
            context = _attend(q, keys[i], values[i], bias, self.key_size ** 0.5)
            context = tf.reshape(context, (rows, steps, self.heads * self.head_size))
            x = self._norm(2 * i + 1, x + _dense(block.attention_output, context), norms)
            inner = _dense(block.intermediate, x)
            x = self._norm(2 * i + 2, x + _dense(block.output, inner), norms)
        return x, keys, values

    def logits(self, x, norms):
        """The MLM head and the vocabulary projection: hidden states ``(rows, s,
        hidden)`` to logits ``(rows, s, vocab)``."""
        parts = self.parts
        x = self._norm(len(self.norm_layers) - 1, _dense(parts.head_dense, x), norms)
        shape = tf.shape(x)
        flat = tf.reshape(x, (-1, x.shape[-1]))
        logits = tf.matmul(flat, parts.token_embedding.embeddings, transpose_b=True)
        return tf.reshape(logits + parts.output_bias, (shape[0], shape[1], self.vocab_size))

    def _norm(self, index, x, norms):
        gamma, beta = norms[index]
        return self.norm_layers[index].normalize(x, gamma, beta)


def assign_slots(cache, slots, new):
    """Write ``new`` into the variable ``cache`` at ``slots``, in place."""
    cache.scatter_nd_update(slots, new)
    return cache


def updated_slots(cache, slots, new):
    """``cache`` (a tensor) with ``new`` at ``slots``."""
    return tf.tensor_scatter_nd_update(cache, slots, new)


def _dense(layer, x):
    """A Keras Dense layer applied from its variables: always in float32, even
    for a model built under a mixed precision policy (whose layers would
    compute in float16 and clash with the float32 cache)."""
    y = tf.matmul(x, layer.kernel)
    if layer.use_bias:
        y += layer.bias
    return layer.activation(y)


def _attend(q, keys, values, bias, temperature):
    """Attention of ``q`` ``(rows, s, heads, d)`` over the cache ``(rows, length,
    heads, d)``; ``bias`` ``(rows, 1, s, length)`` masks keys; scores are
    divided by ``temperature`` (sqrt of the key size).  For one new
    token (the decoding step) products and sums replace the einsums: XLA turns
    them into one pass over the cache instead of transposing it (the step
    measured ~10 % faster)."""
    if q.shape[1] == 1:
        scores = tf.reduce_sum(q * keys, axis=-1) / temperature  # (rows, length, heads)
        scores = tf.transpose(scores, [0, 2, 1])[:, :, None, :]
        probs = tf.nn.softmax(scores + bias, axis=-1)
        weights = tf.transpose(probs[:, :, 0, :], [0, 2, 1])[..., None]
        return tf.reduce_sum(weights * values, axis=1, keepdims=True)
    scores = tf.einsum("bshd,bthd->bhst", q, keys) / temperature
    probs = tf.nn.softmax(scores + bias, axis=-1)
    return tf.einsum("bhst,bthd->bshd", probs, values)
