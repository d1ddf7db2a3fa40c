"""One optimizer step: micro-batches, replicas, XLA and loss scaling.

The step's loss is the task's mean loss over every loss term (for the
language model: the next-token cross-entropy of every real target) of its
micro-batches (``train.accumulate_steps`` of them) on every replica.  Each
replica divides its summed loss by that global count, counted on the
host before the step, so the gradients summed over micro-batches (in
accumulator variables) and over replicas (one all-reduce) are the gradients
of that mean: N micro-batches on R replicas train like one batch of all
their rows, to float rounding.

Without XLA the output layer runs only where a target is real: the hidden
states of those positions are gathered before the tied output projection,
whose vocabulary-wide matmul and softmax are a large share of a step (the
last position and the padding predict nothing).  XLA needs static shapes,
so under it the whole model runs and padding is masked in the loss.

Dropout masks are drawn from the counter ``iterations * N + micro + 1`` (one
new value per micro-batch), a function of the optimizer's step: a run
stopped anywhere resumes with the masks an unbroken run would draw.
"""

import contextlib
import dataclasses
import math

import numpy as np

from cln_textgen.data import batching

from cln_textgen.training import distribute
from cln_textgen.backend import keras, tf
from cln_textgen.model.modeling import model_parts

_BATCH = [tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([None], tf.int32),
          tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int64)]


def token_losses(logits, tokens, pad_id):
    """Per-row summed next-token cross-entropy over real tokens, and their counts.

    Position t predicts token t+1; targets that are padding do not count.  The
    label is the condition, not a token, so the first target is the first
    text token (predicted from [CLS]) and the last is [SEP].  The softmax and
    the loss are float32 whatever the model computes in.
    """
    targets = tokens[:, 1:]
    mask = tf.cast(tf.not_equal(targets, pad_id), tf.float32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, tf.cast(logits[:, :-1], tf.float32))
    return tf.reduce_sum(ce * mask, axis=1), tf.reduce_sum(mask, axis=1)


def make_scorer(model, pad_id, batch_size):
    """``score(token_ids, label_ids) -> (sums, counts)``: each row's summed
    next-token loss and real-target count (:func:`token_losses`), in input
    order, without dropout; one traced step per scorer, whatever the batch shapes."""
    step = tf.function(lambda t, y: token_losses(model([t, y], training=False), t, pad_id),
                       input_signature=[tf.TensorSpec([None, None], tf.int32),
                                        tf.TensorSpec([None], tf.int32)])

    def score(token_ids, label_ids):
        sums, counts = np.zeros(len(token_ids)), np.zeros(len(token_ids))
        for rows in batching.eval_batches([len(t) for t in token_ids], batch_size):
            tokens, labels = batching.pad_batch(token_ids, label_ids, rows, pad_id)
            row_sums, row_counts = step(tokens, labels)
            sums[rows], counts[rows] = row_sums.numpy(), row_counts.numpy()
        return sums, counts

    return score


def perplexity(loss):
    """``exp(loss)``, capped so that a diverged loss reads as a huge number, not inf."""
    return math.exp(min(loss, 50.0))


@dataclasses.dataclass
class EvalResult:
    loss: float
    tokens: int
    per_label: dict  # label -> {"loss", "ppl", "tokens"}; labels without tokens left out

    @property
    def ppl(self):
        return perplexity(self.loss)

    def log_fields(self):
        """The ``eval`` event of ``metrics.jsonl``."""
        return {"valid_loss": self.loss, "valid_ppl": self.ppl, "per_label": self.per_label}

    def describe(self):
        labels = ", ".join(f"{k} {v['ppl']:.2f}" for k, v in self.per_label.items())
        return f"valid loss {self.loss:.4f}, perplexity {self.ppl:.2f} ({labels})"


def split_loss(score, token_ids, label_ids, labels):
    """Token-weighted loss and perplexity of texts under ``score``
    (:func:`make_scorer`), over all and per label (ids into ``labels``)."""
    row_sums, row_counts = score(token_ids, label_ids)
    sums, counts = np.zeros(len(labels)), np.zeros(len(labels))
    np.add.at(sums, np.asarray(label_ids, int), row_sums)
    np.add.at(counts, np.asarray(label_ids, int), row_counts)
    per_label = {}
    for i, label in enumerate(labels):
        if counts[i]:
            loss = sums[i] / counts[i]
            per_label[label] = {"loss": loss, "ppl": perplexity(loss), "tokens": int(counts[i])}
    return EvalResult(sums.sum() / max(counts.sum(), 1), int(counts.sum()), per_label)


@contextlib.contextmanager
def precision_policy(name):
    """Layers built inside compute in ``name`` (``train.mixed_precision``; their
    variables stay float32); the global policy is put back after, so models
    built later (for decoding, say) are float32."""
    if name == "none":
        yield
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class NextTokenLoss:
    """The language model's training loss: ``loss(tokens, labels)`` is the summed
    next-token cross-entropy over the real targets of one replica's rows.

    With ``gather`` (not under XLA) the output layer runs only where a target
    is real: the model up to the hidden states that feed it (``model_parts``'
    ``head_norm``), then the head on the gathered positions, through the same
    Keras layers.
    """

    def __init__(self, model, pad_id, gather=True):
        self.model, self.pad_id, self.gather = model, pad_id, gather
        if gather:
            self.parts = model_parts(model)
            self.trunk = keras.Model(model.inputs, self.parts.head_norm.output)

    def __call__(self, tokens, labels):
        if not self.gather:
            sums, _ = token_losses(self.model([tokens, labels], training=True), tokens,
                                   self.pad_id)
            return tf.reduce_sum(sums)
        hidden = self.trunk([tokens, labels], training=True)
        real = tf.not_equal(tokens[:, 1:], self.pad_id)
        x = self.parts.output_logits(tf.boolean_mask(hidden[:, :-1], real))
        targets = tf.boolean_mask(tokens[:, 1:], real)
        return tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(targets, tf.cast(x, tf.float32)))


class TrainStep:
    """``step(batches, total)``: one optimizer step over ``batches`` (a list of
    ``(tokens, labels)`` micro-batches) whose loss terms number ``total``;
    returns ``(loss, grad_norm)``.  Build it in the strategy's scope.

    ``loss(tokens, labels)`` is the task's summed loss over one replica's rows
    (:class:`NextTokenLoss` for the language model); the step divides it by
    ``total``.  ``optimizer`` is a ``LossScaleOptimizer``; with ``loss_scale``
    (float16: small gradients would flush to zero) the loss is scaled and a
    step with a non-finite gradient is skipped while the scale drops; without,
    its inner optimizer applies the gradients as they are.
    """

    def __init__(self, model, optimizer, strategy, dropout_seed, loss, *, clip_norm=None,
                 accumulate_steps=1, jit_compile=False, loss_scale=False):
        self.model = model
        self.strategy = strategy
        self.dropout = dropout_seed.variable
        self.loss = loss
        self.clip_norm = clip_norm
        self.accumulate_steps = accumulate_steps
        self.variables = model.trainable_variables
        self.optimizer = optimizer
        self.loss_scale = loss_scale
        self.sums = []
        if accumulate_steps > 1:
            # One accumulator per replica (sync on read): each adds its own
            # micro-batch gradients; the all-reduce at the step sums them.
            self.sums = [tf.Variable(tf.zeros_like(v), trainable=False,
                                     synchronization=tf.VariableSynchronization.ON_READ,
                                     aggregation=tf.VariableAggregation.SUM)
                         for v in self.variables]
        # XLA compiles each replica's forward and backward pass; the
        # all-reduce and the update run outside it, under any strategy.
        self._gradients = tf.function(self._replica_gradients, jit_compile=jit_compile)
        self._accumulate = tf.function(self._accumulate_step, input_signature=_BATCH)
        self._apply = tf.function(self._apply_step, input_signature=_BATCH)

    def __call__(self, batches, total):
        total = tf.constant(total, tf.float32)
        losses = [self._accumulate(tokens, labels, total, tf.constant(micro, tf.int64))
                  for micro, (tokens, labels) in enumerate(batches[:-1])]
        tokens, labels = batches[-1]
        last, norm = self._apply(tokens, labels, total, tf.constant(len(batches) - 1, tf.int64))
        return float(tf.add_n(losses + [last])), float(norm)

    # ------------------------------------------------------------ cross-replica

    def _set_dropout_counter(self, micro):
        counter = self.optimizer.iterations * self.accumulate_steps + micro + 1
        self.dropout.assign(tf.stack([self.dropout[0], counter]))

    def _accumulate_step(self, tokens, labels, total, micro):
        self._set_dropout_counter(micro)
        loss = self.strategy.run(self._replica_accumulate, args=(tokens, labels, total))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)

    def _apply_step(self, tokens, labels, total, micro):
        self._set_dropout_counter(micro)
        loss, norm = self.strategy.run(self._replica_apply, args=(tokens, labels, total))
        loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        # Every replica computed the norm of the same all-reduced gradients.
        return loss, self.strategy.experimental_local_results(norm)[0]

    # ------------------------------------------------------------ per replica

    def _replica_gradients(self, tokens, labels, total):
        tokens, labels = distribute.split_rows(tokens, labels)
        with tf.GradientTape() as tape:
            loss = self.loss(tokens, labels) / total
            scaled = self.optimizer.get_scaled_loss(loss) if self.loss_scale else loss
        grads = tape.gradient(scaled, self.variables)
        return loss, [tf.convert_to_tensor(g) for g in grads]

    def _replica_accumulate(self, tokens, labels, total):
        loss, grads = self._gradients(tokens, labels, total)
        for acc, grad in zip(self.sums, grads):
            acc.assign_add(grad)
        return loss

    def _replica_apply(self, tokens, labels, total):
        loss, grads = self._gradients(tokens, labels, total)
        if self.sums:
            grads = [grad + acc for grad, acc in zip(grads, self.sums)]
            for acc in self.sums:
                acc.assign(tf.zeros_like(acc))
        replica = tf.distribute.get_replica_context()
        if replica.num_replicas_in_sync > 1:
            grads = replica.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if self.loss_scale:
            grads = self.optimizer.get_unscaled_gradients(grads)
        norm = tf.linalg.global_norm(grads)
        if self.clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm, use_norm=norm)
        # Already summed over replicas.
        optimizer = self.optimizer if self.loss_scale else self.optimizer.inner_optimizer
        optimizer.apply_gradients(zip(grads, self.variables), skip_gradients_aggregation=True)
        return loss, norm
