"""One optimizer step: micro-batches, replicas, XLA and loss scaling.

A batch is whatever tuple of arrays the task makes (its rows along the first
axis); the step's loss is the task's loss (:class:`~cln_textgen.training.task.Task`)
summed over the rows of its micro-batches (``train.accumulate_steps`` of
them) on every replica, divided by the task's count of loss terms in all,
counted on the host before the step.  So the gradients summed over
micro-batches (in accumulator variables) and over replicas (one all-reduce)
are the gradients of that mean: N micro-batches on R replicas train like one
batch of all their rows, to float rounding.

Dropout masks are drawn from the counter ``iterations * N + micro + 1`` (one
new value per micro-batch), a function of the optimizer's step: a run
stopped anywhere resumes with the masks an unbroken run would draw.
"""

import contextlib

from cln_textgen.backend import keras, tf
from cln_textgen.training import distribute

_SCALARS = [tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int64)]


def batch_spec(batch):
    """The signature of batches shaped like ``batch`` (any row count and length)."""
    return tuple(tf.TensorSpec([None] * array.ndim, tf.as_dtype(array.dtype)) for array in batch)


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


class TrainStep:
    """``step(batches, total)``: one optimizer step over ``batches`` (a list of
    micro-batches, each a tuple of arrays) whose loss terms number ``total``;
    returns ``(loss, grad_norm)``.  Build it in the strategy's scope.

    ``loss(*batch)`` is the task's summed loss over one replica's rows; the
    step divides it by ``total``.  ``optimizer`` is a ``LossScaleOptimizer``; with ``loss_scale``
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
        self._accumulate = self._apply = None  # traced for the task's batches at the first call

    def __call__(self, batches, total):
        if self._apply is None:
            signature = [batch_spec(batches[0])] + _SCALARS
            self._accumulate = tf.function(self._accumulate_step, input_signature=signature)
            self._apply = tf.function(self._apply_step, input_signature=signature)
        total = tf.constant(total, tf.float32)
        losses = [self._accumulate(tuple(batch), total, tf.constant(micro, tf.int64))
                  for micro, batch in enumerate(batches[:-1])]
        last, norm = self._apply(tuple(batches[-1]), total,
                                 tf.constant(len(batches) - 1, tf.int64))
        return float(tf.add_n(losses + [last])), float(norm)

    # ------------------------------------------------------------ cross-replica

    def _set_dropout_counter(self, micro):
        counter = self.optimizer.iterations * self.accumulate_steps + micro + 1
        self.dropout.assign(tf.stack([self.dropout[0], counter]))

    def _accumulate_step(self, batch, total, micro):
        self._set_dropout_counter(micro)
        loss = self.strategy.run(self._replica_accumulate, args=(batch, total))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)

    def _apply_step(self, batch, total, micro):
        self._set_dropout_counter(micro)
        loss, norm = self.strategy.run(self._replica_apply, args=(batch, total))
        loss = self.strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None)
        # Every replica computed the norm of the same all-reduced gradients.
        return loss, self.strategy.experimental_local_results(norm)[0]

    # ------------------------------------------------------------ per replica

    def _replica_gradients(self, batch, total):
        batch = distribute.split_rows(*batch)
        with tf.GradientTape() as tape:
            loss = self.loss(*batch) / total
            scaled = self.optimizer.get_scaled_loss(loss) if self.loss_scale else loss
        grads = tape.gradient(scaled, self.variables)
        return loss, [tf.convert_to_tensor(g) for g in grads]

    def _replica_accumulate(self, batch, total):
        loss, grads = self._gradients(batch, total)
        for acc, grad in zip(self.sums, grads):
            acc.assign_add(grad)
        return loss

    def _replica_apply(self, batch, total):
        loss, grads = self._gradients(batch, total)
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
