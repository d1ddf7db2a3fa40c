"""The exported model: a ``tf.Module`` whose signatures need only TensorFlow.

``generate`` tokenizes its prompt string (:mod:`.tokenize`), runs the
package's own decoding loop (:mod:`cln_textgen.generation.engine`: the same
``tf.while_loop``, forward pass, processors and choice, with the cache as
tensors) or its beam search, and detokenizes (:mod:`.detokenize`), so it
returns the texts ``cln-textgen generate`` prints for the same options and
seed.  Its inputs are the CLI's options under their config names, one per row
of the table of options (:mod:`cln_textgen.options`), each checked by the
table's own rule, plus:

* ``label_weights`` float32 ``[labels]``: one weight per label in ``labels.json``
  order (a label is one-hot, a mix is weights >= 0 summing to 1);
* ``negative_label_weights`` float32 ``[labels]``: with ``guidance`` other than
  1, the condition guidance pushes away from; all zeros for the run's null
  condition;
* ``prompt`` string: every text starts with it, verbatim;
* ``n`` int32: texts (sample ``i`` draws from the seed ``(seed, i)``).

Outputs: ``text`` string ``[n]`` (the prompt, then the continuation),
``continuation`` string ``[n]`` and ``token_ids`` int32 ``[n, T]`` (the new
ids, -1 after a text's end).  ``score(label_weights, token_ids)`` gives each
token's log-probability given the condition, ``[CLS]`` and the tokens before
it; append ``[SEP]``'s id to count the end of the text, as training does.
``info`` returns the run's description, with the ``generate:`` defaults a
client fills unset inputs from.  A value that breaks a rule fails the call
with ``InvalidArgumentError`` naming the input.
"""

import json

from cln_textgen import options as table
from cln_textgen.backend import tf
from cln_textgen.export.detokenize import Detokenizer
from cln_textgen.export.tokenize import GraphTokenizer
from cln_textgen.generation.beams import BeamSearch
from cln_textgen.generation.decoder import CachedDecoder
from cln_textgen.generation.engine import Engine, loop

_DTYPES = {int: tf.int32, float: tf.float32, bool: tf.bool}
# How far a mix's weights may sum from 1 (float32 sums of typed weights).
_SUM_TOLERANCE = 1e-5


class ExportedGenerator(tf.Module):
    """``generate``, ``score`` and ``info`` over a built, restored model."""

    def __init__(self, model, tokenizer, labels, null_id, info):
        super().__init__(name="cln_textgen")
        self._decoder = CachedDecoder(model)  # plain objects: not tracked
        banned = [i for i in tokenizer.special_ids if i != tokenizer.sep_id]
        self._engine = Engine(self._decoder, tokenizer.sep_id, banned, jit_compile=False)
        self._beams = BeamSearch(self._engine)
        self.weights = list(model.weights)  # tracked: what the signatures read
        self.tokenizer = GraphTokenizer(tokenizer.token_dict, tokenizer.lower_case)
        self.detokenizer = Detokenizer(sorted(tokenizer.token_dict, key=tokenizer.token_dict.get))
        self._cls, self._sep = tokenizer.cls_id, tokenizer.sep_id
        self._labels, self._null_id = len(labels), null_id
        self.info_json = json.dumps(info, ensure_ascii=False, indent=2, sort_keys=True)
        weights = [len(labels)]
        # Inputs by name: the signature's keys.
        self.generate = tf.function(self._generate, input_signature=[
            tf.TensorSpec(weights, tf.float32, "label_weights"),
            tf.TensorSpec(weights, tf.float32, "negative_label_weights"),
            tf.TensorSpec([], tf.string, "prompt"), tf.TensorSpec([], tf.int32, "n"),
            *[tf.TensorSpec([], _DTYPES[o.type], o.name) for o in table.OPTIONS]])
        self.score = tf.function(self._score, input_signature=[
            tf.TensorSpec(weights, tf.float32, "label_weights"),
            tf.TensorSpec([None], tf.int32, "token_ids")])

    def signatures(self):
        return {"generate": self.generate.get_concrete_function(),
                "score": self.score.get_concrete_function(), "info": self.info}

    @tf.function(input_signature=[])
    def info(self):
        return {"info": tf.constant(self.info_json)}

    # ------------------------------------------------------------ generate

    def _generate(self, label_weights, negative_label_weights, prompt, n, *values):
        options = _Options(dict(zip([o.name for o in table.OPTIONS], values)))
        prompt_ids = self.tokenizer(prompt)
        guided = options.guidance != 1.0
        with tf.control_dependencies(self._checks(label_weights, negative_label_weights,
                                                  prompt_ids, n, options, guided)):
            prompt_ids = tf.identity(prompt_ids)
        contrast = self._contrast(negative_label_weights)
        ids = tf.cond(options.num_beams > 1,
                      lambda: self._beam_ids(prompt_ids, label_weights, contrast, guided, n,
                                             options),
                      lambda: self._sampled_ids(prompt_ids, label_weights, contrast, guided, n,
                                                options))
        # Trim to the longest text, as the package's results are.
        ids = ids[:, :tf.reduce_max(tf.reduce_sum(tf.cast(ids >= 0, tf.int32), 1))]
        continuation = self._continuation(prompt_ids, ids)
        return {"text": prompt + continuation, "continuation": continuation, "token_ids": ids}

    def _checks(self, label_weights, negative, prompt_ids, n, options, guided):
        """Every rule of the table and of the surfaces, as graph assertions."""
        checks = []
        for option in table.OPTIONS:
            if option.valid is not None:
                checks.append(tf.debugging.assert_equal(
                    option.valid(getattr(options, option.name)), True,
                    message=f"{option.name} {option.rule}"))
        for breaks, rule, _ in table.CONTRADICTIONS:
            checks.append(tf.debugging.assert_equal(breaks(options), False, message=rule))
        for breaks, rule, _ in table.N_RULES:
            checks.append(tf.debugging.assert_equal(breaks(n, options, False), False,
                                                    message=rule))
        checks.append(_check_mix(label_weights, "label_weights"))
        given = tf.reduce_any(negative != 0.0)
        checks.append(tf.debugging.assert_equal(
            tf.logical_or(~given, _is_mix(negative)), True,
            message="negative_label_weights must be all zeros (the null condition) or "
                    "weights >= 0 summing to 1"))
        checks.append(tf.debugging.assert_equal(given & ~guided, False, message=(
            "negative_label_weights only matter with guidance; set guidance above 1 or give "
            "zeros")))
        if self._null_id is None:
            checks.append(tf.debugging.assert_equal(guided & ~given, False, message=(
                "guidance needs a null condition, and this run was trained without one; "
                "give negative_label_weights")))
        needed = tf.size(prompt_ids) + tf.maximum(options.max_new_tokens - 1, 0)
        checks.append(tf.debugging.assert_less_equal(
            needed, self._decoder.max_position,
            message=f"the prompt and max_new_tokens need more than the model's "
                    f"{self._decoder.max_position} positions"))
        return checks

    def _conditions(self, weights):
        """Label weights over the model's condition rows (the null row last)."""
        rows = max(self._decoder.condition_rows, 1)
        if not self._decoder.condition_rows:
            return tf.zeros([rows])
        return tf.pad(weights, [[0, rows - self._labels]])

    def _contrast(self, negative):
        if self._null_id is None:
            return self._conditions(negative)
        null = tf.one_hot(self._null_id, max(self._decoder.condition_rows, 1))
        return tf.cond(tf.reduce_any(negative != 0.0), lambda: self._conditions(negative),
                       lambda: null)

    def _rows(self, prompt_ids, label_weights, contrast, guided, count, first, options):
        """The engine's state for rows ``first .. first+count-1`` of a call
        (guided: each beside a contrast row, after all of them)."""
        copies = tf.where(guided, 2, 1)
        rows = count * copies
        length = tf.size(prompt_ids)
        tokens = tf.tile(prompt_ids[None], [rows, 1])
        weights = tf.concat([tf.tile(self._conditions(label_weights)[None], [count, 1]),
                             tf.tile(contrast[None], [rows - count, 1])], 0)
        partner = (tf.range(rows) + count) % rows  # a text's contrast row, and back
        params = {o.name: tf.fill([count], getattr(options, o.name)) for o in table.ROW_OPTIONS}
        return self._engine.begin(tokens, tf.fill([rows], length), length + options.max_new_tokens,
                                  weights, params, first + tf.range(count), partner)

    def _sampled_ids(self, prompt_ids, label_weights, contrast, guided, n, options):
        """``n`` sampled texts' new ids, ``batch_size`` rows at a time: ``[n,
        max_new_tokens]``, -1 after each end."""
        width = options.max_new_tokens
        start = tf.size(prompt_ids)

        def chunk(first, out):
            count = tf.minimum(options.batch_size, n - first)
            state = loop(self._engine, self._rows(prompt_ids, label_weights, contrast, guided,
                                                  count, first, options))
            ids = state.history[:count, start:start + width]
            ids = tf.pad(ids, [[0, 0], [0, width - tf.shape(ids)[1]]], constant_values=-1)
            column = tf.range(width)[None, :] + start
            real = (column < state.length[:count, None]) & (ids != self._sep)
            return first + count, out.write(first // options.batch_size, tf.where(real, ids, -1))

        _, out = tf.while_loop(lambda first, _: first < n, chunk,
                               (0, tf.TensorArray(tf.int32, size=0, dynamic_size=True,
                                                  infer_shape=False)))
        return tf.reshape(out.concat(), [n, width])

    def _beam_ids(self, prompt_ids, label_weights, contrast, guided, n, options):
        """The ``n`` best of ``num_beams`` beams: ``[n, max_new_tokens]``, -1 after each end."""
        beams = options.num_beams
        state = self._rows(prompt_ids, label_weights, contrast, guided, beams, 0, options)
        state = loop(self._beams, self._beams.begin(state, beams, n))
        start, width = tf.size(prompt_ids), options.max_new_tokens
        ids = state.finished_history[0, :, start:start + width]
        ids = tf.pad(ids, [[0, 0], [0, width - tf.shape(ids)[1]]], constant_values=-1)
        column = tf.range(width)[None, :] + start
        real = (column < state.finished_length[0, :, None]) & \
            (state.finished_scores[0, :, None] > -float("inf"))
        return tf.where(real, ids, -1)

    def _continuation(self, prompt_ids, ids):
        """The text ``ids`` add after the prompt, as the package cuts it: the
        decoded whole minus the decoded prompt (or the ids alone if the whole
        does not start with it)."""
        rows = tf.shape(ids)[0]
        prefix = tf.tile(prompt_ids[None], [rows, 1])
        whole = self.detokenizer(tf.concat([prefix, ids], 1))
        head = self.detokenizer(prefix[:1])[0]
        size = tf.fill([rows], tf.strings.length(head))
        starts = tf.strings.substr(whole, tf.zeros([rows], tf.int32), size) == head
        rest = tf.strings.substr(whole, size, tf.strings.length(whole) - size)
        return tf.where(starts, rest, self.detokenizer(ids))

    # ------------------------------------------------------------ score

    def _score(self, label_weights, token_ids):
        count = tf.size(token_ids)
        checks = [_check_mix(label_weights, "label_weights"),
                  tf.debugging.assert_greater(count, 0, "token_ids must hold at least one id"),
                  tf.debugging.assert_less_equal(count, self._decoder.max_position,
                                                 f"token_ids: at most {self._decoder.max_position} "
                                                 "ids"),
                  tf.debugging.assert_greater_equal(token_ids, 0, "token_ids must be >= 0"),
                  tf.debugging.assert_less(token_ids, self._decoder.vocab_size,
                                           f"token_ids must be < {self._decoder.vocab_size}")]
        with tf.control_dependencies(checks):
            token_ids = tf.identity(token_ids)
        feed = tf.concat([[self._cls], token_ids[:-1]], 0)[None]
        norms = self._decoder.norms(self._conditions(label_weights)[None])
        log_probs = tf.nn.log_softmax(self._decoder.sequence_logits(feed, norms)[0])
        per_token = tf.gather(log_probs, token_ids, batch_dims=1)
        return {"token_log_probs": per_token, "log_likelihood": tf.reduce_sum(per_token)}


class _Options:
    """The option inputs by name (what the table's rules read)."""

    def __init__(self, values):
        self.__dict__.update(values)


def _is_mix(weights):
    return tf.reduce_all(weights >= 0.0) & (tf.abs(tf.reduce_sum(weights) - 1.0) <= _SUM_TOLERANCE)


def _check_mix(weights, name):
    return tf.debugging.assert_equal(_is_mix(weights), True, message=(
        f"{name} must be weights >= 0 summing to 1, one per label (one-hot for a label)"))
