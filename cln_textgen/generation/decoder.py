"""The model's ``next``: its forward pass over a key/value cache, one row at a time.

The model is causal (lower-triangular attention), so the keys and values of a
position never change once computed: a key/value cache makes decoding exact
while feeding one new token per row and step.  :class:`CachedDecoder` runs
the same forward pass as the Keras model, written out over the model's own
weights (the layers' variables are read directly, so a model still training
decodes with its current weights), with three savings:

* the conditional LayerNorm gamma/beta of every norm are computed once per
  row (:meth:`CachedDecoder.norms`), not once per token;
* the MLM head and the vocabulary projection run on the last position only;
* a step feeds one token per row and attends over that row's cache.

Every row has its own cache columns: its prompt fills columns ``0 .. P-1``
(prompts of a batch are padded on the right, which nothing real ever sees:
a query sees the columns up to its own), and the token a row is fed goes to
the column its history has reached.  Rows therefore need not move in step:
a row may join a running batch in any free row of the cache (the server
does this), and each row's logits are those it would get alone.

The cache is one ``(2, layers, rows, columns, heads, size)`` array of every
layer's keys and values: a variable updated in place by the package's loop
(copying a tensor cache at every step cost 40 % of the step for 32 rows), a
tensor carried by the ``tf.while_loop`` of the exported graph.  The norm
offsets are one ``(rows, norms, 2, hidden)`` tensor: every input of a
compiled step costs at each call, so the step takes few.
Everything runs in float32 from the variables, whatever precision policy the
model was built under.
"""

import numpy as np

from cln_textgen.backend import tf
from cln_textgen.errors import UserError
from cln_textgen.model.modeling import model_parts

# Masked attention scores.  Finite on purpose: a pad column has no key to
# attend to, and -inf there would give NaN states that 0 * NaN spreads into
# real rows; exp(-1e9 - max) is exactly 0 in float32, as exp(-inf) is.
_MASKED = -1e9
# Cache lengths are rounded up to this multiple so that nearby prompt and
# generation lengths reuse one compiled step instead of compiling again.
LENGTH_BUCKET = 16


def condition_weights(conditions, size):
    """``(rows, size)`` float32 weights over the label embedding's rows, one row
    per condition: a label id (weight 1 on it) or a mix, ``((id, weight), ...)``.
    A one-hot row picks its label's embedding exactly, as a gather would."""
    weights = np.zeros((len(conditions), size), np.float32)
    for row, condition in enumerate(conditions):
        for label, weight in ((condition, 1.0),) if np.isscalar(condition) else condition:
            weights[row, int(label)] += weight
    return weights


def right_pad(prompts, value):
    """``(rows, longest)`` int32 array of ``prompts`` padded on the right, and
    each prompt's length."""
    lengths = np.array([len(p) for p in prompts], np.int32)
    out = np.full((len(prompts), max(lengths, default=0)), value, np.int32)
    for row, prompt in enumerate(prompts):
        out[row, :len(prompt)] = prompt
    return out, lengths


def cache_length(needed):
    """Columns of a cache holding ``needed`` tokens per row (an int or a
    tensor): rounded up to :data:`LENGTH_BUCKET`, so that few shapes are ever
    compiled."""
    return (needed + LENGTH_BUCKET - 1) // LENGTH_BUCKET * LENGTH_BUCKET


def row_bucket(rows, limit):
    """Rows a batch of ``rows`` is padded to: the next power of two, at most
    ``limit`` (and at least ``rows``), so that few batch shapes are ever compiled."""
    return max(min(1 << max(rows - 1, 0).bit_length(), limit), rows)


def widths(needed):
    """``(history, cache)`` columns of a batch whose rows hold at most ``needed``
    tokens (prompt and new tokens): the cache one fewer, since the last new
    token is never fed (attention over spare columns costs: 80 instead of 64
    made a step 14 % slower)."""
    return cache_length(needed), cache_length(needed - 1)


class CachedDecoder:
    """Key/value-cached forward pass of a conditional LM built by ``build_model``."""

    def __init__(self, model):
        self.parts = model_parts(model)
        self.num_layers = len(self.parts.blocks)
        self.norm_layers = self.parts.norms()  # in the order the forward pass meets them
        self.heads, self.key_size, self.head_size = (self.parts.heads, self.parts.key_size,
                                                     self.parts.head_size)
        if self.key_size != self.head_size:  # one cache array holds keys and values
            raise ValueError(f"key size {self.key_size} differs from head size {self.head_size}")
        self.vocab_size = self.parts.vocab_size
        self.max_position = self.parts.max_position

    @property
    def condition_rows(self):
        """Rows of the label embedding (the labels, then the null condition if
        any); 0 for an unconditional model."""
        embedding = self.parts.label_embedding
        return 0 if embedding is None else int(embedding.input_dim)

    def check_positions(self, prompt_length, max_new_tokens):
        """The rule every surface shares: a prompt and its new tokens fit the
        model's positions (the last new token is never fed)."""
        needed = prompt_length + max(max_new_tokens - 1, 0)
        if needed > self.max_position:
            raise UserError(f"the prompt and max_new_tokens={max_new_tokens} need {needed} "
                            f"positions but the model has {self.max_position}; shorten the "
                            "prompt or lower max_new_tokens")

    def condition_weights(self, conditions):
        """:func:`condition_weights` over this model's condition rows (an
        unconditional model reads none: zeros)."""
        if not self.condition_rows:
            return np.zeros((len(conditions), 1), np.float32)
        return condition_weights(conditions, self.condition_rows)

    def norms(self, weights):
        """``(rows, norms, 2, hidden)``: each row's gamma and beta of every norm
        for condition ``weights`` ``(rows, condition_rows)`` (see
        :func:`condition_weights`)."""
        cond = None  # an unconditional model: the plain weights, broadcast over the rows
        if self.parts.label_embedding is not None:
            cond = tf.matmul(weights, self.parts.label_embedding.embeddings)
        rows = tf.shape(weights)[0]
        return tf.stack([tf.stack([_per_row(t, rows) for t in layer.condition_offsets(cond, 2)],
                                  1) for layer in self.norm_layers], 1)

    def empty_cache(self, rows, length, variable=False):
        """Zeros for ``rows`` x ``length`` columns, as a tensor or a variable."""
        zeros = tf.zeros((2, self.num_layers, rows, length, self.heads, self.key_size))
        return tf.Variable(zeros, trainable=False) if variable else zeros

    def prefill(self, tokens, lengths, norms, cache, rows=None):
        """Run right-padded prompts ``tokens`` ``(n, P)`` (``lengths`` real
        tokens each) and write their keys and values into columns ``0 .. P-1``
        of cache rows ``rows`` (default ``0 .. n-1``).  Returns ``(logits
        (n, vocab) after each prompt's last token, cache)``."""
        n, steps = tf.shape(tokens)[0], tf.shape(tokens)[1]
        rows = tf.range(n) if rows is None else rows
        columns = tf.broadcast_to(tf.range(steps)[None, :], (n, steps))
        bias = _causal_bias(steps)
        slots = tf.stack([tf.broadcast_to(rows[:, None], (n, steps)), columns], axis=-1)

        def attend(i, q, k, v, cache):
            cache = _write(cache, i, slots, k, v)
            return _attend_all(q, k, v, bias, self.key_size ** 0.5), cache

        x, cache = self._layers(tokens, columns, norms, cache, attend)
        last = tf.gather(x, tf.maximum(lengths - 1, 0), batch_dims=1)
        return self.logits(last[:, None], norms)[:, 0], cache

    def sequence_logits(self, tokens, norms):
        """Logits ``(n, s, vocab)`` after every token of ``tokens`` ``(n, s)``,
        without a cache (scoring whole texts)."""
        n, steps = tf.shape(tokens)[0], tf.shape(tokens)[1]
        columns = tf.broadcast_to(tf.range(steps)[None, :], (n, steps))
        bias = _causal_bias(steps)

        def attend(i, q, k, v, cache):
            return _attend_all(q, k, v, bias, self.key_size ** 0.5), cache

        x, _ = self._layers(tokens, columns, norms, None, attend)
        return self.logits(x, norms)

    def step(self, tokens, columns, norms, cache):
        """Feed one token per row of the cache (``tokens``, ``columns``:
        ``(rows,)``); returns ``(next logits (rows, vocab), cache)``."""
        rows = tf.shape(tokens)[0]
        length = tf.shape(cache)[3]
        columns = tf.minimum(columns, length - 1)  # a finished row's feed may run past the end
        bias = tf.where(tf.range(length)[None, :] <= columns[:, None], 0.0, _MASKED)
        bias = bias[:, None, None, :]  # (rows, heads, 1, length)
        slots = tf.stack([tf.range(rows), columns], axis=-1)[:, None]

        def attend(i, q, k, v, cache):
            cache = _write(cache, i, slots, k, v)
            return _attend_cache(q, cache[0, i], cache[1, i], bias, self.key_size ** 0.5), cache

        x, cache = self._layers(tokens[:, None], columns[:, None], norms, cache, attend)
        return self.logits(x, norms)[:, 0], cache

    @staticmethod
    def reorder(cache, rows):
        """Row ``i`` of the cache becomes a copy of row ``rows[i]`` (beam search)."""
        if isinstance(cache, tf.Variable):
            cache.assign(tf.gather(cache, rows, axis=2))
            return cache
        return tf.gather(cache, rows, axis=2)

    def _layers(self, tokens, columns, norms, cache, attend):
        """The transformer layers over ``tokens`` ``(n, s)`` at cache ``columns``
        (also their positions); ``attend(layer, q, k, v, cache)`` stores the
        new keys and values and returns ``(context, cache)``."""
        n, steps = tf.shape(tokens)[0], tf.shape(tokens)[1]
        parts = self.parts
        positions = tf.minimum(columns, self.max_position - 1)
        x = tf.gather(parts.token_embedding.embeddings, tokens) + tf.gather(
            parts.position_embedding.embeddings, positions)
        x = self._norm(0, x, norms)
        for i, block in enumerate(parts.blocks):
            q = tf.reshape(_dense(block.query, x), (n, steps, self.heads, self.key_size))
            k = tf.reshape(_dense(block.key, x), (n, steps, self.heads, self.key_size))
            v = tf.reshape(_dense(block.value, x), (n, steps, self.heads, self.head_size))
            context, cache = attend(i, q, k, v, cache)
            context = tf.reshape(context, (n, steps, self.heads * self.head_size))
            x = self._norm(2 * i + 1, x + _dense(block.attention_output, context), norms)
            inner = _dense(block.intermediate, x)
            x = self._norm(2 * i + 2, x + _dense(block.output, inner), norms)
        return x, cache

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
        return self.norm_layers[index].normalize(x, norms[:, index, 0][:, None],
                                                 norms[:, index, 1][:, None])


def _causal_bias(steps):
    """``(1, 1, steps, steps)``: a query sees its own column and those before it."""
    visible = tf.range(steps)[None, :] <= tf.range(steps)[:, None]
    return tf.where(visible, 0.0, _MASKED)[None, None]


def _per_row(value, rows):
    """A norm's gamma or beta as ``(rows, dim)`` (a plain weight is broadcast)."""
    if value.shape.rank == 1:
        return tf.broadcast_to(value[None, :], (rows, value.shape[0]))
    return value


def _write(cache, layer, slots, k, v):
    """``cache`` with layer ``layer``'s new keys ``k`` and values ``v`` at
    ``slots`` (``(n, s, 2)``: row, column): in place for a variable."""
    where = tf.broadcast_to(tf.constant([0, layer], tf.int32), tf.concat([tf.shape(slots)[:-1], [2]], 0))
    indices = tf.stack([tf.concat([where, slots], -1),
                        tf.concat([where + [1, 0], slots], -1)])
    if isinstance(cache, tf.Variable):
        cache.scatter_nd_update(indices, tf.stack([k, v]))
        return cache
    return tf.tensor_scatter_nd_update(cache, indices, tf.stack([k, v]))


def _dense(layer, x):
    """A Keras Dense layer applied from its variables: always in float32, even
    for a model built under a mixed precision policy (whose layers would
    compute in float16 and clash with the float32 cache)."""
    y = tf.matmul(x, layer.kernel)
    if layer.use_bias:
        y += layer.bias
    return layer.activation(y)


def _attend_all(q, k, v, bias, temperature):
    """Attention of ``q`` ``(n, s, heads, d)`` over the keys ``k`` and values
    ``v`` of the same tokens; ``bias`` masks keys; scores are divided by
    ``temperature`` (sqrt of the key size)."""
    scores = tf.einsum("bshd,bthd->bhst", q, k) / temperature
    probs = tf.nn.softmax(scores + bias, axis=-1)
    return tf.einsum("bhst,bthd->bshd", probs, v)


def _attend_cache(q, keys, values, bias, temperature):
    """One new token per row, ``q`` ``(rows, 1, heads, d)``, over its row of the
    cache ``(rows, length, heads, d)``; ``bias`` ``(rows, 1, 1, length)``.
    Products and sums replace the einsums: XLA turns them into one pass over
    the cache instead of transposing it (the step measured ~10 % faster)."""
    scores = tf.reduce_sum(q * keys, axis=-1) / temperature  # (rows, length, heads)
    scores = tf.transpose(scores, [0, 2, 1])[:, :, None, :]
    probs = tf.nn.softmax(scores + bias, axis=-1)
    weights = tf.transpose(probs[:, :, 0, :], [0, 2, 1])[..., None]
    return tf.reduce_sum(weights * values, axis=1, keepdims=True)
