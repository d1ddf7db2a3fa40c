"""The exported model: a ``tf.Module`` whose signatures need only TensorFlow.

``generate`` runs the whole decoding loop in the graph: the prompt pass and
every step are :meth:`CachedDecoder.forward` (the package's own forward pass)
with the key/value cache carried as ``tf.while_loop`` tensors, and each token
is chosen by the package's sampling functions
(:mod:`cln_textgen.generation.choice`) with the same per-row seeds, so the
export returns the tokens ``generate`` returns for the same options and seed.
The samplers' order of precedence is kept: ``top_k`` 1 is greedy, then top-p
(after top-k), then top-k, then a draw from the whole distribution.
Repetition penalties, n-gram bans, a minimum length and beam search are not
exported (the run's ``generate:`` defaults for them do not apply).

Inputs (all scalars but the ids; an invalid value fails the call with
``InvalidArgumentError`` naming the input):

* ``label_id`` int32: index into the labels of ``info`` (``labels.json`` order);
* ``prompt_ids`` int32 ``[P]``: the prompt's token ids without ``[CLS]``
  (added here) and without ``[SEP]``; ``P`` may be 0;
* ``n`` int32 >= 1: samples; sample ``i`` draws from the seed ``(seed, i)``;
* ``max_new_tokens`` int32 >= 0; ``temperature`` float32 > 0;
  ``top_k`` int32 >= 0 (0: off, 1: greedy); ``top_p`` float32 in (0, 1]
  (1: off); ``seed`` int32 >= 0.

Outputs: ``token_ids`` int32 ``[n, T]``, the new ids of each sample without
``[SEP]``, -1 after a sample's end (``T``: the longest sample), and ``text``
string ``[n]``, the continuation decoded as the package's tokenizer decodes
(the prompt not included).  ``score(label_id, token_ids)`` gives each token's
log-probability given the label, ``[CLS]`` and the tokens before it
(``token_log_probs`` float32 ``[L]``) and their sum (``log_likelihood``):
append ``[SEP]``'s id to count the end of the text, as training does.
"""

import json

from cln_textgen.backend import tf
from cln_textgen.export.detokenize import Detokenizer
from cln_textgen.generation.choice import (draw_among, gumbel_draw, mask_tokens, row_seeds,
                                          top_k_draw, top_p_draw, top_p_shortlist)
from cln_textgen.generation.decoder import _LENGTH_BUCKET, CachedDecoder, updated_slots

GENERATE_SIGNATURE = [
    tf.TensorSpec([], tf.int32, "label_id"), tf.TensorSpec([None], tf.int32, "prompt_ids"),
    tf.TensorSpec([], tf.int32, "n"), tf.TensorSpec([], tf.int32, "max_new_tokens"),
    tf.TensorSpec([], tf.float32, "temperature"), tf.TensorSpec([], tf.int32, "top_k"),
    tf.TensorSpec([], tf.float32, "top_p"), tf.TensorSpec([], tf.int32, "seed")]
SCORE_SIGNATURE = [tf.TensorSpec([], tf.int32, "label_id"),
                   tf.TensorSpec([None], tf.int32, "token_ids")]


def choose(logits, top_k, top_p, seeds):
    """One token per row of processed ``logits``, as the sampler the options
    name would choose it (:func:`cln_textgen.generation.texts.make_sampler`)."""
    return tf.case([
        (top_k == 1, lambda: tf.argmax(logits, axis=-1, output_type=tf.int32)),
        ((top_p < 1.0) & (top_k > 0),
         lambda: draw_among(*top_p_shortlist(logits, top_p, top_k), seeds)),
        (top_p < 1.0, lambda: top_p_draw(logits, top_p, seeds)),
        (top_k > 0, lambda: top_k_draw(logits, top_k, seeds)),
    ], default=lambda: gumbel_draw(logits, seeds), exclusive=False)


class ExportedGenerator(tf.Module):
    """``generate``, ``score`` and ``info`` over a built, restored model."""

    def __init__(self, model, tokenizer, num_labels, info):
        super().__init__(name="cln_textgen")
        self._decoder = CachedDecoder(model, jit_compile=False)  # not tracked: plain object
        self.weights = list(model.weights)  # tracked: what the signatures read
        tokens = sorted(tokenizer.token_dict, key=tokenizer.token_dict.get)
        self.detokenizer = Detokenizer(tokens)
        self._cls, self._sep = tokenizer.cls_id, tokenizer.sep_id
        banned = [i for i in tokenizer.special_ids if i != tokenizer.sep_id]
        self._banned = tf.constant([i in banned for i in range(len(tokens))])
        self._num_labels = num_labels
        self.info_json = json.dumps(info, ensure_ascii=False, indent=2, sort_keys=True)

    def signatures(self):
        return {"generate": self.generate, "score": self.score, "info": self.info}

    @tf.function(input_signature=[])
    def info(self):
        return {"info": tf.constant(self.info_json)}

    def _check_ids(self, label_id, ids, name):
        return [tf.debugging.assert_greater_equal(label_id, 0, "label_id must be >= 0"),
                tf.debugging.assert_less(label_id, self._num_labels,
                                         f"label_id must be < {self._num_labels} (labels)"),
                tf.debugging.assert_greater_equal(ids, 0, f"{name} must be >= 0"),
                tf.debugging.assert_less(ids, self._decoder.vocab_size,
                                         f"{name} must be < {self._decoder.vocab_size} (vocab)")]

    def _start(self, label_id, tokens, length):
        """Condition offsets of the rows and an empty cache of ``length`` columns."""
        d = self._decoder
        rows = tf.shape(tokens)[0]
        # The decoder's per-row condition offsets, as its start() computes them
        # (one-hot weights over the label embedding's rows).
        norms = d._norm_offsets(tf.one_hot(tf.fill([rows], label_id), max(d.condition_rows, 1)))
        keys = [tf.zeros((rows, length, d.heads, d.key_size)) for _ in range(d.num_layers)]
        values = [tf.zeros((rows, length, d.heads, d.head_size)) for _ in range(d.num_layers)]
        return norms, keys, values

    @tf.function(input_signature=GENERATE_SIGNATURE)
    def generate(self, label_id, prompt_ids, n, max_new_tokens, temperature, top_k, top_p,
                 seed):
        d = self._decoder
        prompt = tf.concat([[self._cls], prompt_ids], 0)
        prompt_length = tf.size(prompt)
        # As the package sizes its cache (the last new token is never fed).
        needed = prompt_length + tf.maximum(max_new_tokens - 1, 0)
        checks = self._check_ids(label_id, prompt_ids, "prompt_ids") + [
            tf.debugging.assert_greater_equal(n, 1, "n must be >= 1"),
            tf.debugging.assert_greater_equal(max_new_tokens, 0, "max_new_tokens must be >= 0"),
            tf.debugging.assert_less_equal(
                needed, d.max_position, f"the prompt and max_new_tokens need more than the "
                                        f"model's {d.max_position} positions"),
            tf.debugging.assert_greater(temperature, 0.0, "temperature must be > 0"),
            tf.debugging.assert_greater_equal(top_k, 0, "top_k must be >= 0 (0: off)"),
            tf.debugging.assert_greater(top_p, 0.0, "top_p must be in (0, 1]"),
            tf.debugging.assert_less_equal(top_p, 1.0, "top_p must be in (0, 1]"),
            tf.debugging.assert_greater_equal(seed, 0, "seed must be >= 0")]
        with tf.control_dependencies(checks):  # everything below waits for the checks
            n, max_new_tokens = tf.identity(n), tf.identity(max_new_tokens)
            prompt = tf.identity(prompt)
        length = (needed + _LENGTH_BUCKET - 1) // _LENGTH_BUCKET * _LENGTH_BUCKET
        tokens = tf.tile(prompt[None], [n, 1])
        pads = tf.zeros([n], tf.int32)
        norms, keys, values = self._start(label_id, tokens, length)
        x, keys, values = d.forward(tokens, 0, pads, norms, keys, values, write=updated_slots)
        logits = d.logits(x[:, -1:], norms)[:, 0]
        rows = tf.range(n)

        def step(i, logits, finished, out, keys, values):
            processed = mask_tokens(logits, self._banned) / temperature
            chosen = choose(processed, top_k, top_p, row_seeds(seed, rows, i))
            ended = finished | (chosen == self._sep)
            out = tf.tensor_scatter_nd_update(
                out, tf.stack([rows, tf.fill([n], i)], 1), tf.where(ended, -1, chosen))
            # Ended rows are fed [SEP] and their logits ignored, as the package does.
            feed = tf.where(ended, self._sep, chosen)[:, None]

            def forward():
                h, k, v = d.forward(feed, prompt_length + i, pads, norms, keys, values,
                                    write=updated_slots)
                return d.logits(h, norms)[:, 0], k, v

            more = (i + 1 < max_new_tokens) & ~tf.reduce_all(ended)
            logits, keys, values = tf.cond(more, forward, lambda: (logits, keys, values))
            return i + 1, logits, ended, out, keys, values

        out = tf.fill([n, max_new_tokens], -1)
        _, _, _, out, _, _ = tf.while_loop(
            lambda i, logits, finished, *_: (i < max_new_tokens) & ~tf.reduce_all(finished),
            step, (0, logits, tf.zeros([n], tf.bool), out, keys, values))
        out = out[:, :tf.reduce_max(tf.reduce_sum(tf.cast(out >= 0, tf.int32), 1))]
        return {"token_ids": out, "text": self.detokenizer(out)}

    @tf.function(input_signature=SCORE_SIGNATURE)
    def score(self, label_id, token_ids):
        d = self._decoder
        count = tf.size(token_ids)
        checks = self._check_ids(label_id, token_ids, "token_ids") + [
            tf.debugging.assert_greater(count, 0, "token_ids must hold at least one id"),
            tf.debugging.assert_less_equal(count, d.max_position,
                                           f"token_ids: at most {d.max_position} ids")]
        with tf.control_dependencies(checks):
            count, token_ids = tf.identity(count), tf.identity(token_ids)
        feed = tf.concat([[self._cls], token_ids[:-1]], 0)[None]
        norms, keys, values = self._start(label_id, feed, count)
        x, _, _ = d.forward(feed, 0, tf.zeros([1], tf.int32), norms, keys, values,
                            write=updated_slots)
        log_probs = tf.nn.log_softmax(d.logits(x, norms)[0])
        per_token = tf.gather(log_probs, token_ids, batch_dims=1)
        return {"token_log_probs": per_token, "log_likelihood": tf.reduce_sum(per_token)}
