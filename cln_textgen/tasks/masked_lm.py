"""Masked-LM pretraining of a BERT on raw text, as a task of the training loop.

Rows are texts packed ``[CLS] a [SEP] b [SEP] ...`` into ``data.max_length``
tokens (:mod:`cln_textgen.data.text_corpus`).  Each batch masks its rows anew
(BERT's 80/10/10 rule, ``data.mask_rate`` of the tokens), from a generator
seeded by ``(train.seed, step, micro-batch)``, so a resumed run masks exactly
what an unbroken one masks.  The first ``data.lm_share`` of a batch's rows are
left-to-right rows instead (UniLM's recipe): unmasked, lower-triangular
attention, every next token a target, the same MLM head.  The loss is the mean
cross-entropy over masked targets plus the mean over left-to-right targets,
each kind weighing the same whatever its number of targets; the output layer
runs at targets only.

The evaluation names the hidden token at ``[MASK]`` positions of held-out
texts, each scored alone with a fixed 15% of its tokens hidden (always
``[MASK]``): loss and accuracy per held-out set and in all; with
left-to-right rows, also their next-token loss and accuracy.
"""

import dataclasses

import numpy as np

from cln_textgen.backend import keras, tf
from cln_textgen.data import batching, text_corpus
from cln_textgen.model.bert_weights import load_bert_weights
from cln_textgen.model.modeling import ModelConfig, model_parts
from cln_textgen.model.pretraining import build_pretraining_model, start_local_heads
from cln_textgen.model.tokenization import TextTokenizer

_MASK_STREAM = 0x3a5c  # keeps the mask draws apart from any other stream of (seed, ...)
EVAL_ROWS = 64


class MaskedLMLoss:
    """``loss(inputs, segments, causal, targets, weights)``: the weighted summed
    cross-entropy at the targets of one replica's rows (``weights`` > 0).

    With ``gather`` the MLM head runs at target positions only: the model up
    to the head's input, then the head's own layers on the gathered rows."""

    def __init__(self, model, gather=True):
        self.model, self.gather = model, gather
        self.parts = model_parts(model)
        if gather:
            self.trunk = keras.Model(model.inputs, self.parts.head_dense.input)

    def scored(self, inputs, segments, causal, targets, weights, training):
        """``(logits, targets, weights)`` at the positions with a weight."""
        if not self.gather:
            logits = self.model([inputs, segments, causal], training=training)
            return (tf.reshape(tf.cast(logits, tf.float32), [-1, tf.shape(logits)[-1]]),
                    tf.reshape(targets, [-1]), tf.reshape(weights, [-1]))
        positions = tf.where(weights > 0)
        hidden = tf.gather_nd(self.trunk([inputs, segments, causal], training=training),
                              positions)
        parts = self.parts
        logits = parts.output_logits(parts.head_norm(parts.head_dense(hidden)))
        return (tf.cast(logits, tf.float32), tf.gather_nd(targets, positions),
                tf.gather_nd(weights, positions))

    def __call__(self, inputs, segments, causal, targets, weights):
        logits, targets, weights = self.scored(inputs, segments, causal, targets, weights, True)
        return tf.reduce_sum(weights * tf.nn.sparse_softmax_cross_entropy_with_logits(
            targets, logits))


@dataclasses.dataclass
class HeldOut:
    """Held-out figures: ``loss`` is the masked loss over every set."""

    loss: float
    sets: dict  # name -> {"loss", "accuracy", "tokens"}; "all"; "<name> left to right"

    def log_fields(self):
        return {"valid_loss": self.loss, "held_out": self.sets}

    def describe(self):
        masked = ", ".join(f"{name} {s['accuracy']:.1%}" for name, s in self.sets.items()
                           if name != "all" and not name.endswith(" left to right"))
        line = (f"held-out masked loss {self.loss:.4f}, accuracy at [MASK] "
                f"{self.sets['all']['accuracy']:.1%} ({masked})")
        lm = [f"{name} {s['loss']:.4f}" for name, s in self.sets.items()
              if name.endswith(" left to right")]
        return line + (f"; next-token loss {', '.join(lm)}" if lm else "")


@dataclasses.dataclass
class MaskedLMTask:
    """A pretraining run, started or resumed (see :mod:`cln_textgen.tasks.pretrain_start`)."""

    run: object  # runs.folder.PretrainDir
    config: object  # pretrain_config.PretrainConfig
    model_config: ModelConfig
    tokenizer: TextTokenizer
    token_ids: np.ndarray  # packed training rows
    segment_ids: np.ndarray
    held_out: dict  # name -> id pieces of the held-out texts
    corpus: dict  # what the model card reports of the data
    resumed: bool
    pretrained: object = None  # pretrained.PretrainedBert to continue, for a new run
    checkpoint: str = None
    lock: object = None
    moved_to: object = None
    _eval: object = None  # (scoring function, batches), made at the first evaluation

    @property
    def has_valid(self):
        return bool(self.held_out)

    @property
    def special_ids(self):
        return np.array(self.tokenizer.special_ids)

    def row_lengths(self):
        return [self.token_ids.shape[1]] * len(self.token_ids)

    def make_batch(self, indices, step, micro, length_multiple=1, rows_multiple=1):
        d, tok = self.config.data, self.tokenizer
        tokens, segments = self.token_ids[indices], self.segment_ids[indices].copy()
        rng = np.random.default_rng([self.config.train.seed, step, micro, _MASK_STREAM])
        inputs, masked = text_corpus.mask_rows(tokens, rng, self.special_ids,
                                               tok.token_dict["[MASK]"], tok.vocab_size,
                                               d.mask_rate)
        targets = tokens.copy()
        causal = np.zeros(len(indices), np.int32)
        k = round(d.lm_share * len(indices))
        left = np.zeros_like(masked)
        if k:
            causal[:k] = 1
            inputs[:k], segments[:k] = tokens[:k], 0  # a left-to-right row is one segment
            targets[:k], left[:k] = text_corpus.next_token_rows(tokens[:k], tok.pad_id)
            masked[:k] = False
        weights = (masked / max(masked.sum(), 1) + left / max(left.sum(), 1)).astype(np.float32)
        return _pad((inputs, segments, causal, targets, weights), length_multiple,
                    rows_multiple, tok.cls_id, tok.pad_id)

    def count_targets(self, batch):
        return 1  # the loss of a micro-batch is already its means: one term each

    def count_tokens(self, batch):
        return int(np.count_nonzero(batch[0] != self.tokenizer.pad_id))

    def build_model(self, dropout_seed):
        return build_pretraining_model(self.model_config, dropout_seed)

    def warm_start(self, model):
        """Continue the pretrained BERT, or start a new one's local heads."""
        if self.pretrained is not None:
            return load_bert_weights(model, self.pretrained.variables(),
                                     str(self.pretrained.weights_path), fold_segments=False)
        start_local_heads(model, self.config.model.local_heads, self.config.train.seed)
        return False

    def training_loss(self, model, gather):
        return MaskedLMLoss(model, gather)

    def evaluate(self, model):
        if self._eval is None:
            self._eval = (_scorer(MaskedLMLoss(model)), self._held_out_batches())
        score, batches = self._eval
        sets = {name: _figures(score, rows) for name, rows in batches.items()}
        masked = [rows for name, rows in batches.items() if not name.endswith(" left to right")]
        sets["all"] = _figures(score, [b for rows in masked for b in rows])
        return HeldOut(sets["all"]["loss"], sets)

    def _held_out_batches(self):
        """Each set's masked rows (a fixed seed: the same positions every time) and,
        with left-to-right rows in training, its next-token rows."""
        tok = self.tokenizer
        out = {}
        for name, pieces in self.held_out.items():
            rng = np.random.default_rng(text_corpus.HELD_OUT_MASK_SEED)
            pieces = sorted(pieces, key=len)
            masked, left = [], []
            for start in range(0, len(pieces), EVAL_ROWS):
                tokens, segments = text_corpus.single_rows(pieces[start:start + EVAL_ROWS],
                                                           tok.cls_id, tok.sep_id, tok.pad_id)
                inputs, chosen = text_corpus.mask_rows(
                    tokens, rng, self.special_ids, tok.token_dict["[MASK]"], tok.vocab_size,
                    text_corpus.HELD_OUT_MASK_RATE, always_mask=True)
                causal = np.zeros(len(tokens), np.int32)
                masked.append((inputs, segments, causal, tokens, chosen.astype(np.float32)))
                following, real = text_corpus.next_token_rows(tokens, tok.pad_id)
                left.append((tokens, segments, causal + 1, following, real.astype(np.float32)))
            out[name] = masked
            if self.config.data.lm_share:
                out[f"{name} left to right"] = left
        return out

    def samples(self, model):
        return []


def _pad(batch, length_multiple, rows_multiple, cls_id, pad_id):
    """Round the batch's length and rows up; the added rows are ``[CLS]`` then
    padding, with no target."""
    inputs, segments, causal, targets, weights = batch
    rows, length = inputs.shape
    new_rows = batching.round_up(rows, rows_multiple)
    new_length = batching.round_up(length, length_multiple)
    if (new_rows, new_length) == (rows, length):
        return batch

    def grown(array, fill):
        out = np.full((new_rows,) + ((new_length,) if array.ndim == 2 else ()), fill,
                      array.dtype)
        out[tuple(slice(0, n) for n in array.shape)] = array
        return out

    inputs = grown(inputs, pad_id)
    inputs[rows:, 0] = cls_id
    return (inputs, grown(segments, 0), grown(causal, 0), grown(targets, pad_id),
            grown(weights, 0))


def _scorer(loss):
    """``score(batch) -> (summed loss, correct, count)`` at the scored positions."""
    spec = [tf.TensorSpec([None, None], tf.int32)] * 2 + [tf.TensorSpec([None], tf.int32),
                                                         tf.TensorSpec([None, None], tf.int32),
                                                         tf.TensorSpec([None, None], tf.float32)]

    @tf.function(input_signature=spec)
    def score(inputs, segments, causal, targets, weights):
        logits, targets, _ = loss.scored(inputs, segments, causal, targets, weights, False)
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets)
        return (tf.reduce_sum(losses), tf.reduce_sum(tf.cast(correct, tf.float32)),
                tf.size(targets))

    return lambda batch: score(*batch)


def _figures(score, batches):
    loss = correct = count = 0.0
    for batch in batches:
        batch_loss, batch_correct, batch_count = score(batch)
        loss, correct = loss + float(batch_loss), correct + float(batch_correct)
        count += int(batch_count)
    count = max(count, 1)
    return {"loss": round(loss / count, 4), "accuracy": round(correct / count, 4),
            "tokens": int(count)}
