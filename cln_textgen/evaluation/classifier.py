"""The independent label classifier that judges whether generated text obeys its label.

A plain bidirectional BERT (bert4keras's own, no Conditional LayerNorm, no
causal mask) from the same pretrained checkpoint as the generator, with a
softmax layer on the [CLS] vector, fine-tuned on the run's training split.  It
shares no weights with the generator, which must never judge itself.  Its
folder is self-contained like a run folder::

    config.yaml       the merged config it was trained from
    classifier.json   ClassifierConfig (rebuilds the network)
    labels.json       label names in id order (the run's order)
    vocab.txt         the pretrained BERT's vocabulary
    checkpoints/      training checkpoints (resume; checkpoints/best: lowest valid loss)
    metrics.jsonl     training events, as in a run folder (and tensorboard/)
    weights.*         the fine-tuned weights kept (a TF checkpoint)
    report.json       training log and accuracy on the test split (written last)

It is trained by :mod:`cln_textgen.tasks.classifier`.

Texts longer than ``data.max_length`` tokens are split into pieces exactly as
for the generator, so the classifier learns and is tested on the same units of
text the generator learns to produce.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np

from cln_textgen.backend import bert4keras, keras, tf
from cln_textgen.data import batching
from cln_textgen.errors import UserError
from cln_textgen.evaluation.metrics import label_accuracy
from cln_textgen.model.layers import SeededTruncatedNormal
from cln_textgen.model.modeling import BertShape, activation
from cln_textgen.model.tokenization import TextTokenizer
from cln_textgen.runs.folder import RunDir


@dataclasses.dataclass
class ClassifierConfig(BertShape):
    """Everything needed to rebuild the classifier; saved as ``classifier.json``:
    the BERT's shape (the schema of ``model.json``), then the classifier's own."""

    num_labels: int = 2
    max_length: int = 128
    lower_case: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1
    seed: int = 0


class ClassifierDir(RunDir):
    """A classifier folder: a run folder (checkpoints/, metrics.jsonl, tensorboard/
    while it trains) whose model is a ClassifierConfig, plus the final weights."""

    model_config = property(lambda self: self.path / "classifier.json")
    weights = property(lambda self: self.path / "weights")
    report = property(lambda self: self.path / "report.json")

    def is_complete(self):
        files = (self.model_config, self.labels, self.vocab, self.report,
                 self.path / "weights.index")
        return all(p.is_file() for p in files)

    def read_json(self, path):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: unreadable ({e}); train the classifier again") from None


def default_dir(run_dir):
    """``runs/demo`` -> ``runs/demo-classifier``: beside the run, not inside it."""
    path = Path(run_dir)
    return path.with_name(path.name + "-classifier")


class _Encoder(bert4keras.models.BERT):
    """bert4keras BERT with seeded initial values (those not loaded: none, unless the
    checkpoint lacks a part) and the checkpoint's LayerNorm epsilon."""

    def __init__(self, seed, layer_norm_eps, **kwargs):
        super().__init__(**kwargs)
        self._initializer = SeededTruncatedNormal(stddev=0.02, seed=seed)
        self._layer_norm_eps = layer_norm_eps

    @property
    def initializer(self):
        return self._initializer

    def apply(self, inputs=None, layer=None, arguments=None, **kwargs):
        if layer is bert4keras.layers.LayerNormalization:
            kwargs["epsilon"] = self._layer_norm_eps
        return super().apply(inputs=inputs, layer=layer, arguments=arguments, **kwargs)


def build_classifier(config):
    """The Keras model ``token_ids -> label logits`` (softmax applied by the caller)."""
    encoder = _Encoder(
        seed=config.seed, layer_norm_eps=config.layer_norm_eps,
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=activation(config.hidden_act),
        dropout_rate=config.dropout, attention_dropout_rate=config.attention_dropout,
        max_position=config.max_position, segment_vocab_size=0, name="bert")
    encoder.build()
    # Lambda drops the padding mask, which has no meaning for one vector per text.
    x = keras.layers.Lambda(lambda h: h[:, 0], name="CLS")(encoder.model.output)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, name="CLS-Dropout")(x)
    logits = keras.layers.Dense(
        config.num_labels, name="Label-Logits",
        kernel_initializer=SeededTruncatedNormal(stddev=0.02, seed=config.seed + 1))(x)
    return keras.Model(encoder.model.input, logits, name="label_classifier")


def predictor(model):
    """``model``'s inference pass, traced once: build it once per model."""
    return tf.function(lambda t: model(t, training=False),
                       input_signature=[tf.TensorSpec([None, None], tf.int32)])


def _logits(predict, num_labels, token_ids, pad_id, batch_size):
    """Logits of every row, in input order; ``predict`` from :func:`predictor`."""
    out = np.zeros((len(token_ids), num_labels), np.float32)
    zeros = [0] * len(token_ids)
    for rows in batching.eval_batches([len(t) for t in token_ids], batch_size):
        tokens, _ = batching.pad_batch(token_ids, zeros, rows, pad_id)
        out[rows] = predict(tokens).numpy()
    return out


def accuracy(predict, split, labels, pad_id, batch_size):
    """Accuracy (micro, macro, per label), the confusion matrix and the mean
    cross-entropy ``loss`` of the classifier on ``split``."""
    logits = _logits(predict, len(labels), split.encoded.token_ids, pad_id, batch_size)
    predicted = logits.argmax(-1)
    target_ids = np.asarray(split.encoded.label_ids)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    loss = float(-log_probs[np.arange(len(target_ids)), target_ids].mean())
    targets = [labels[i] for i in target_ids]
    result = label_accuracy(targets, [labels[i] for i in predicted], labels)
    confusion = {t: {p: 0 for p in labels} for t in labels}
    for t, p in zip(targets, predicted):
        confusion[t][labels[p]] += 1
    return {**result, "examples": len(targets), "confusion": confusion, "loss": loss}


class Classifier:
    """A trained classifier loaded from its folder: ``probabilities(texts)``."""

    def __init__(self, directory, model, tokenizer, labels, config, report):
        self.directory, self.model, self.tokenizer = directory, model, tokenizer
        self.labels, self.config, self.report = list(labels), config, report
        self._predict = predictor(model)

    @classmethod
    def load(cls, path):
        folder = ClassifierDir(path)
        if not folder.is_complete():
            raise UserError(f"{folder.path}: no trained classifier there (classifier.json, "
                            "labels.json, vocab.txt, weights.*, report.json expected); train "
                            "one with: cln-textgen classifier train --config RUN/config.yaml")
        config = ClassifierConfig(**folder.read_json(folder.model_config))
        model = build_classifier(config)
        try:
            tf.train.Checkpoint(model=model).read(str(folder.weights)).expect_partial() \
                .assert_existing_objects_matched()
        except (AssertionError, tf.errors.OpError, ValueError) as e:
            raise UserError(f"{folder.weights}: does not fit {folder.model_config} "
                            f"({str(e).splitlines()[0]}); train the classifier again") from None
        tokenizer = TextTokenizer.from_file(folder.vocab, config.lower_case)
        return cls(folder.path, model, tokenizer, folder.read_json(folder.labels), config,
                   folder.read_json(folder.report))

    def probabilities(self, texts, batch_size=32):
        """``(len(texts), len(labels))`` softmax probabilities; long texts are cut."""
        ids = [self.tokenizer.encode(text, self.config.max_length) for text in texts]
        if not ids:
            return np.zeros((0, len(self.labels)), np.float32)
        logits = _logits(self._predict, len(self.labels), ids, self.tokenizer.pad_id, batch_size)
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
