"""The conditional language model as a task of the training loop.

Rows are ``[CLS] text [SEP]`` token ids with their label; a batch is
``(tokens, labels)`` padded per batch, the labels with label dropout (rows
given the null condition, a pure function of the seed and the step).  The loss
is next-token cross-entropy over real targets; the evaluation is the valid
loss and perplexity in all and per label; the samples are texts generated for
every label.
"""

import dataclasses

from cln_textgen.backend import keras, tf
from cln_textgen.data import batching
from cln_textgen.evaluation.perplexity import make_scorer, split_loss, token_losses
from cln_textgen.generation.generate import Decoding, generate
from cln_textgen.options import GenerationOptions
from cln_textgen.model.bert_weights import load_bert_weights
from cln_textgen.model.modeling import ModelConfig, build_model, model_parts
from cln_textgen.model.tokenization import TextTokenizer
from cln_textgen.runs.folder import RunDir
from cln_textgen.tasks.labelled import LabelledRows


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


@dataclasses.dataclass
class LanguageModelTask(LabelledRows):
    """A conditional LM run, started or resumed (see :mod:`cln_textgen.tasks.lm_start`)."""

    run: RunDir
    config: object  # config.Config
    model_config: ModelConfig
    tokenizer: TextTokenizer
    labels: list
    train: object  # corpus.Split
    valid: object  # corpus.Split or None
    resumed: bool
    pretrained: object = None  # pretrained.PretrainedBert, for a new run
    keep_tokens: list = None
    mlm_loaded: bool = None  # set by warm_start: whether the checkpoint had the MLM head
    scorer: object = None  # the valid-loss scorer of the trained model, made once
    checkpoint: str = None  # the checkpoint to resume from
    lock: object = None  # lock.FolderLock, held while the process writes the run
    moved_to: object = None  # where --fresh moved the previous folder
    _sampler: object = None  # a float32 single-device copy for samples, when needed
    _decoding: object = None  # the sampling model's decoder, compiled once

    def make_batch(self, indices, step, micro, length_multiple=1, rows_multiple=1):
        tokens, labels = self.padded(indices, length_multiple, rows_multiple)
        return tokens, self.training_labels(labels, step, micro)

    def training_labels(self, labels, step, micro):
        """The conditions a training batch is fed: its labels, with label dropout."""
        m = self.model_config
        if m.null_id is None:
            return labels
        return batching.drop_labels(labels, m.label_dropout, m.null_id, m.seed, step, micro)

    def count_targets(self, batch):
        return self.count_tokens(batch)  # the next-token targets are the real tokens

    def build_model(self, dropout_seed):
        return build_model(self.model_config, dropout_seed)

    def training_loss(self, model, gather):
        return NextTokenLoss(model, self.tokenizer.pad_id, gather)

    def evaluate(self, model):
        """Token-weighted valid loss and perplexity, in all and per label."""
        if self.scorer is None:
            self.scorer = make_scorer(model, self.tokenizer.pad_id, self.config.train.batch_size)
        encoded = self.valid.encoded
        return split_loss(self.scorer, encoded.token_ids, encoded.label_ids, self.labels)

    def samples(self, model):
        """``train.samples_per_label`` texts per label, sampled with the run's options."""
        t, g = self.config.train, self.config.generate
        if not t.samples_per_label:
            return []
        # Always sampled, never beam-searched or greedy: samples_per_label may exceed 1.
        options = GenerationOptions.from_config(g, num_beams=1, greedy=False, seed=t.seed)
        model = self._sampling_model(model)
        if self._decoding is None or self._decoding.model is not model:
            self._decoding = Decoding(model)
        # The config's guidance is checked to have a null condition to contrast with.
        contrast = self.model_config.null_id if options.guidance != 1.0 else None
        out = generate(model, self.tokenizer, list(range(len(self.labels))),
                       n=t.samples_per_label, options=options, decoding=self._decoding,
                       contrast=contrast)
        records = [{"label": self.labels[s.label_id], "text": s.text} for s in out]
        return [(r, f"[{r['label']}] {r['text']}") for r in records]

    def _sampling_model(self, model):
        """The model itself, or a float32 single-device copy of it when it trains
        under mixed precision or a strategy: the cached decoder reads the layers'
        variables and runs float32 on one device."""
        t = self.config.train
        if t.mixed_precision == "none" and t.distribute == "none":
            return model
        if self._sampler is None:
            self._sampler = build_model(self.model_config)
        self._sampler.set_weights(model.get_weights())
        return self._sampler

    def warm_start(self, model):
        """Load the pretrained BERT into a freshly built model (new runs only).

        With ``model.init: random`` nothing is loaded: the model keeps the
        weights it was built with, drawn from streams seeded by ``train.seed``
        (a baseline that shows what pretraining buys); only the BERT's config
        and vocabulary are used."""
        if self.config.model.init == "random":
            self.mlm_loaded = False
            return self.mlm_loaded
        self.mlm_loaded = load_bert_weights(model, self.pretrained.variables(),
                                            str(self.pretrained.weights_path), self.keep_tokens)
        return self.mlm_loaded

    def describe_warm_start(self):
        """The loader's report on the output layer, for the new-run log."""
        if self.config.model.init == "random":
            return (f"model.init: random (weights drawn with seed {self.config.train.seed}; "
                    "only the BERT's config and vocabulary are used)")
        if self.mlm_loaded:
            return "MLM head: loaded from the checkpoint"
        return "MLM head: initialised, not in the checkpoint (it starts from random values)"
