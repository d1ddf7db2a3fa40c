"""The network of masked-LM pretraining: a plain BERT whose rows choose their mask.

The same seeded layers as the conditional LM (:class:`~cln_textgen.model.modeling.SeededBert`),
unconditional, with BERT's segment embeddings and its MLM head; a third input,
``causal`` (one int per row), gives a row a lower-triangular attention mask, so
the same weights also train as a left-to-right LM.  Its weights are a plain
BERT's: the checkpoint folder a pretraining run writes loads as any Google BERT.

Inputs are ``[token_ids, segment_ids, causal]``; the output is MLM logits.
"""

import numpy as np

from cln_textgen.backend import bert4keras, keras, tf
from cln_textgen.model.layers import DropoutSeed
from cln_textgen.model.modeling import SeededBert, model_parts, seeded_bert

INITIALIZER_RANGE = 0.02  # BERT's, and the project's seeded initialiser's


def _row_attention_mask(inputs):
    token_ids, causal = inputs
    index = tf.range(tf.shape(token_ids)[1])
    lower = index[None, :] <= index[:, None]  # query j sees keys k <= j
    causal = tf.cast(causal, tf.bool)[:, None, None]
    return tf.logical_or(lower[None], tf.logical_not(causal))


class _RowMaskBert(SeededBert):
    def compute_attention_bias(self, inputs=None):
        if self.attention_bias is None:
            self.attention_bias = self.apply(
                inputs=[self.inputs[0], self.inputs[-1]], layer=bert4keras.layers.Lambda,
                function=_row_attention_mask, name="Attention-Row-Mask")
        return self.attention_bias


def build_pretraining_model(config, dropout_seed=None):
    """The Keras model ``[token_ids, segment_ids, causal] -> logits`` of ``config``
    (a :class:`~cln_textgen.model.modeling.ModelConfig`)."""
    dropout_seed = dropout_seed or DropoutSeed(config.seed)
    causal_in = keras.layers.Input(shape=(), dtype="int32", name="Input-Causal")
    transformer = seeded_bert(_RowMaskBert, config, dropout_seed,
                              segment_vocab_size=config.type_vocab_size, with_mlm="linear",
                              name="bert")
    transformer.build(additional_input_layers=causal_in)
    return transformer.model


def neighbour_offsets(count):
    """Offsets of the neighbours the first ``count`` heads look at: -1, 1, -2, 2, ..."""
    return [(i // 2 + 1) * (-1 if i % 2 == 0 else 1) for i in range(count)]


def start_local_heads(model, count, seed):
    """Start the first ``count`` heads of every layer looking at a neighbour.

    A BERT trained from scratch spends its first thousands of steps predicting
    every hidden character from its frequency alone: attention has to find,
    by gradient, that the characters next to a [MASK] tell most about it.
    This starts it there instead; the weights stay a plain BERT's (only their
    starting values change):

    * the last ``key_size`` dimensions of the embeddings carry the position
      alone: the token and segment embeddings start at zero there, the
      position embeddings hold sine/cosine pairs there and zero elsewhere;
    * in head ``h`` the query rotates those pairs by the head's offset ``o`` and
      the key copies them, so the score of query ``i`` and key ``j`` peaks at
      ``j = i + o``; scaled so that after the embedding norm most of the
      attention falls on that neighbour;
    * the head's values read a random view of the token dimensions and its
      output writes it back there, so the neighbour's token reaches the
      position that attends to it.
    """
    if not count:
        return
    parts = model_parts(model)
    hidden = int(parts.token_embedding.embeddings.shape[1])
    positions = parts.max_position
    key_size = parts.key_size
    token_dims, pairs = hidden - key_size, key_size // 2
    for layer in (parts.token_embedding, model.get_layer("Embedding-Segment")):
        table = layer.embeddings.numpy()
        table[:, token_dims:] = 0.0
        layer.embeddings.assign(table)
    freqs = 0.75 * np.pi * (np.pi / (0.75 * np.pi * positions)) ** (np.arange(pairs) / (pairs - 1))
    angles = np.arange(positions)[:, None] * freqs
    # The norm of the token part of an embedding (truncated normal: std 0.88 x range).
    scale = 0.88 * INITIALIZER_RANGE * np.sqrt(token_dims / pairs)
    table = np.zeros((positions, hidden))
    table[:, token_dims::2] = scale * np.sin(angles)
    table[:, token_dims + 1::2] = scale * np.cos(angles)
    parts.position_embedding.embeddings.assign(table.astype(np.float32))
    # After the norm a sine/cosine pair has amplitude about 2, so a score
    # (divided by sqrt(key_size) = 8 for heads of 64) peaks at about 20.
    qk_scale = np.sqrt(20.0 / 16.0)
    rng = np.random.default_rng([seed, 2])
    sin_rows, cos_rows = np.arange(token_dims, hidden, 2), np.arange(token_dims + 1, hidden, 2)
    for block in parts.blocks:
        dense = [block.query, block.key, block.value, block.attention_output]
        q, k, v, o = (d.kernel.numpy() for d in dense)
        for head, offset in enumerate(neighbour_offsets(count)):
            cols = np.arange(head * key_size, (head + 1) * key_size)
            sin_cols, cos_cols = cols[0::2], cols[1::2]
            cos, sin = qk_scale * np.cos(freqs * offset), qk_scale * np.sin(freqs * offset)
            q[:, cols] = 0.0
            q[sin_rows, sin_cols], q[cos_rows, sin_cols] = cos, sin
            q[cos_rows, cos_cols], q[sin_rows, cos_cols] = cos, -sin
            k[:, cols] = 0.0
            k[sin_rows, sin_cols] = k[cos_rows, cos_cols] = qk_scale
            view, _ = np.linalg.qr(rng.normal(size=(token_dims, key_size)))
            v[:, cols] = 0.0
            v[:token_dims, cols] = view
            o[cols, :] = 0.0
            o[cols, :token_dims] = view.T
        for d, kernel in zip(dense, (q, k, v, o)):
            d.kernel.assign(kernel.astype(np.float32))
