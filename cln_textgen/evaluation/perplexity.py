"""How likely a language model finds texts: next-token losses and perplexity.

The same figures serve the trainer (valid loss and perplexity of the conditional
LM at each evaluation) and ``evaluate`` (perplexity of generated and real text
under a run and its baseline).
"""

import dataclasses
import math

import numpy as np

from cln_textgen.backend import tf
from cln_textgen.data import batching


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
