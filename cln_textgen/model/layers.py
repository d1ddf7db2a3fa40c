"""Keras layers and initialisers of the conditional model."""

from cln_textgen.backend import bert4keras, keras, tf


@keras.utils.register_keras_serializable(package="cln_textgen")
class ConditionalLayerNormalization(keras.layers.Layer):
    """Layer normalisation whose gamma and beta can be shifted by a condition.

    Called on ``x`` it is a plain LayerNorm over the last axis.  With
    ``conditional=True`` it is called on ``[x, cond]``: ``cond`` (one vector per
    example) goes through an optional ``hidden_units`` projection, then through
    two bias-free Dense layers whose kernels start at zero, and their outputs
    are added to gamma and beta, broadcast over the sequence.  Because those
    kernels start at zero, a freshly built conditional layer computes exactly
    what the unconditional one with the same gamma and beta computes.

    Weights are created in the order beta, gamma, then the condition
    projections, so a checkpoint mapping ``[beta, gamma]`` loads into it.
    """

    def __init__(
        self,
        center=True,
        scale=True,
        epsilon=None,
        conditional=False,
        hidden_units=None,
        hidden_activation="linear",
        hidden_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.center = center
        self.scale = scale
        self.epsilon = 1e-12 if epsilon is None else epsilon
        self.conditional = conditional
        self.hidden_units = hidden_units
        self.hidden_activation = keras.activations.get(hidden_activation)
        self.hidden_initializer = keras.initializers.get(hidden_initializer)

    def build(self, input_shape):
        if self.conditional:
            input_shape, cond_shape = input_shape
        dim = int(input_shape[-1])
        if self.center:
            self.beta = self.add_weight(name="beta", shape=(dim,), initializer="zeros")
        if self.scale:
            self.gamma = self.add_weight(name="gamma", shape=(dim,), initializer="ones")
        if self.conditional:
            cond_dim = int(cond_shape[-1])
            if self.hidden_units is not None:
                self.hidden_dense = keras.layers.Dense(
                    self.hidden_units,
                    activation=self.hidden_activation,
                    use_bias=False,
                    kernel_initializer=self.hidden_initializer,
                    name="hidden_dense",
                    dtype=self.dtype_policy,
                )
                self.hidden_dense.build((None, cond_dim))
                cond_dim = self.hidden_units
            if self.center:
                self.beta_dense = keras.layers.Dense(
                    dim, use_bias=False, kernel_initializer="zeros", name="beta_dense",
                    dtype=self.dtype_policy,
                )
                self.beta_dense.build((None, cond_dim))
            if self.scale:
                self.gamma_dense = keras.layers.Dense(
                    dim, use_bias=False, kernel_initializer="zeros", name="gamma_dense",
                    dtype=self.dtype_policy,
                )
                self.gamma_dense.build((None, cond_dim))
        super().build(input_shape)

    def condition_offsets(self, cond=None, rank=3):
        """``(gamma, beta)`` for a condition, shaped to scale an input of ``rank``.

        With a condition (``(batch, d)``) each is ``(batch, 1, ..., dim)``;
        without one, or for an unconditional layer, the plain weights.  An
        entry is None where ``center``/``scale`` is off.  Decoders call this
        once per label rather than once per token.
        """
        gamma = self.gamma if self.scale else None
        beta = self.beta if self.center else None
        if self.conditional and cond is not None:
            if self.hidden_units is not None:
                cond = self.hidden_dense(cond)
            shape = tf.concat([tf.shape(cond)[:1], [1] * (rank - 2), [-1]], axis=0)
            if self.scale:
                gamma = gamma + tf.reshape(self.gamma_dense(cond), shape)
            if self.center:
                beta = beta + tf.reshape(self.beta_dense(cond), shape)
        return gamma, beta

    def call(self, inputs):
        cond = None
        if self.conditional:
            inputs, cond = inputs
            if cond.shape.rank == 3:  # (batch, 1, d), as an Embedding gives it
                cond = cond[:, 0]
        gamma, beta = self.condition_offsets(cond, inputs.shape.rank)
        return self.normalize(inputs, gamma, beta)

    def normalize(self, x, gamma, beta):
        mean = tf.reduce_mean(x, axis=-1, keepdims=True)
        x = x - mean
        variance = tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)
        x = x * tf.math.rsqrt(variance + self.epsilon)
        if gamma is not None:
            x = x * gamma
        if beta is not None:
            x = x + beta
        return x

    def compute_mask(self, inputs, mask=None):
        if self.conditional and mask is not None:
            return mask[0]
        return mask

    def compute_output_shape(self, input_shape):
        return input_shape[0] if self.conditional else input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            center=self.center,
            scale=self.scale,
            epsilon=self.epsilon,
            conditional=self.conditional,
            hidden_units=self.hidden_units,
            hidden_activation=keras.activations.serialize(self.hidden_activation),
            hidden_initializer=keras.initializers.serialize(self.hidden_initializer),
        )
        return config


@keras.utils.register_keras_serializable(package="cln_textgen")
class SeededTruncatedNormal(keras.initializers.Initializer):
    """Truncated normal initialiser that draws a new, reproducible tensor per call.

    Keras initialisers return the same tensor every time one instance is
    called, and unseeded ones repeat across instances too: a BERT built with
    them gets equal q/k/v/o kernels.  This one keeps a call counter and draws
    call ``i`` from the stateless stream ``(seed, i)``, so sharing one instance
    across a whole model gives every weight its own values, the same on every
    build in the same order.
    """

    def __init__(self, stddev=0.02, seed=0):
        self.stddev = stddev
        self.seed = int(seed)
        self.calls = 0

    def __call__(self, shape, dtype=None, **kwargs):
        self.calls += 1
        dtype = tf.as_dtype(dtype or keras.backend.floatx())
        values = tf.random.stateless_truncated_normal(
            shape, seed=[self.seed, self.calls], stddev=self.stddev, dtype=tf.float32
        )
        return tf.cast(values, dtype)

    def get_config(self):
        return {"stddev": self.stddev, "seed": self.seed}


class DropoutSeed:
    """The random state of every dropout draw: ``[seed, counter]`` in a variable.

    Dropout masks are pure functions of this pair and of each layer's salt.
    The trainer advances the counter once per forward pass and keeps the
    variable in its checkpoint.  Not a Keras-tracked object on purpose: the
    layers only read it, and the trainer decides where it is saved.
    """

    def __init__(self, seed=0):
        self.variable = tf.Variable([int(seed), 0], dtype=tf.int64, trainable=False,
                                    name="dropout_seed")

    def draw(self, shape, salt):
        seed = tf.random.experimental.stateless_fold_in(self.variable, salt)
        return tf.random.stateless_uniform(shape, seed=seed)


def _dropout(x, rate, source, salt, training):
    if not training or not rate:
        return x
    keep = source.draw(tf.shape(x), salt) >= rate
    return tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))


class SeededDropout(keras.layers.Layer):
    """Dropout whose masks come from a :class:`DropoutSeed` (exact on resume)."""

    def __init__(self, rate, salt=0, source=None, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.rate = float(rate)
        self.salt = int(salt)
        self.source = source

    def call(self, inputs, training=None):
        return _dropout(inputs, self.rate, self.source, self.salt, training)

    def get_config(self):
        config = super().get_config()
        config.update(rate=self.rate, salt=self.salt)
        return config


class SeededAttention(bert4keras.layers.MultiHeadAttention):
    """bert4keras attention with its probability dropout drawn from a DropoutSeed."""

    def __init__(self, *args, salt=0, source=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.salt = int(salt)
        self.source = source

    def pay_attention_to(self, inputs, mask=None, **kwargs):
        # Only what a BERT uses: scaled dot product, a boolean or additive
        # attention bias, softmax; no relative or rotary positions.
        qw, kw, vw = inputs[:3]
        a_bias = inputs[3] if kwargs.get("a_bias") else None
        scores = tf.einsum("bjhd,bkhd->bhjk", qw, kw) / self.key_size ** 0.5
        scores = tf.cast(scores, tf.float32)  # mixed precision: softmax in float32
        if a_bias is not None and a_bias.shape.rank == 3:
            a_bias = a_bias[:, None]
        probs = bert4keras.backend.attention_normalize(scores, mask[1] if mask else None, -1, "softmax", a_bias)
        probs = _dropout(probs, self.attention_dropout, self.source, self.salt,
                         kwargs.get("training"))
        return tf.einsum("bhjk,bkhd->bjhd", tf.cast(probs, vw.dtype), vw), scores

    def get_config(self):
        config = super().get_config()
        config.update(salt=self.salt)
        return config
