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
    weights.*         the fine-tuned weights (a TF checkpoint)
    report.json       training log and accuracy on the test split (written last)

Texts longer than ``data.max_length`` tokens are split into pieces exactly as
for the generator, so the classifier learns and is tested on the same units of
text the generator learns to produce.
"""

import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cln_textgen.data import batching
from cln_textgen.backend import bert4keras, keras, tf
from cln_textgen.data.corpus import load_split, read_train_labels
from cln_textgen.errors import UserError
from cln_textgen.model.layers import SeededTruncatedNormal
from cln_textgen.evaluation.metrics import label_accuracy
from cln_textgen.model.modeling import activation, load_bert_weights
from cln_textgen.model.pretrained import open_pretrained
from cln_textgen.runs.folder import write_text_atomic
from cln_textgen.runs.lock import LOCK_NAME
from cln_textgen.training.start import check_max_length, model_config_for
from cln_textgen.model.tokenization import TextTokenizer, read_vocab, write_vocab
from cln_textgen.training.schedule import WarmupLinearDecay
from cln_textgen.training.trainer import NO_DECAY


@dataclasses.dataclass
class ClassifierConfig:
    """Everything needed to rebuild the classifier; saved as ``classifier.json``."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    max_position: int
    layer_norm_eps: float
    num_labels: int
    max_length: int
    lower_case: bool
    dropout: float
    attention_dropout: float
    seed: int


class ClassifierDir:
    def __init__(self, path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    model_config = property(lambda self: self.path / "classifier.json")
    labels = property(lambda self: self.path / "labels.json")
    vocab = property(lambda self: self.path / "vocab.txt")
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


def _predictor(model):
    """``model``'s inference pass, traced once: build it once per model."""
    return tf.function(lambda t: model(t, training=False),
                       input_signature=[tf.TensorSpec([None, None], tf.int32)])


def _logits(predict, num_labels, token_ids, pad_id, batch_size):
    """Logits of every row, in input order; ``predict`` from :func:`_predictor`."""
    out = np.zeros((len(token_ids), num_labels), np.float32)
    zeros = [0] * len(token_ids)
    for rows in batching.eval_batches([len(t) for t in token_ids], batch_size):
        tokens, _ = batching.pad_batch(token_ids, zeros, rows, pad_id)
        out[rows] = predict(tokens).numpy()
    return out


def _accuracy(predict, split, labels, pad_id, batch_size):
    predicted = _logits(predict, len(labels), split.encoded.token_ids, pad_id,
                        batch_size).argmax(-1)
    targets = [labels[i] for i in split.encoded.label_ids]
    result = label_accuracy(targets, [labels[i] for i in predicted], labels)
    confusion = {t: {p: 0 for p in labels} for t in labels}
    for t, p in zip(targets, predicted):
        confusion[t][labels[p]] += 1
    return {**result, "examples": len(targets), "confusion": confusion}


class Classifier:
    """A trained classifier loaded from its folder: ``probabilities(texts)``."""

    def __init__(self, directory, model, tokenizer, labels, config, report):
        self.directory, self.model, self.tokenizer = directory, model, tokenizer
        self.labels, self.config, self.report = list(labels), config, report
        self._predict = _predictor(model)

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


def train_classifier(config, out, say=print, progress=True):
    """Fine-tune on ``data.train``, keep the epoch best on ``data.valid`` (if any),
    test on ``data.test``, save into ``out``; returns the report dict."""
    folder = ClassifierDir(out)
    if folder.path.exists() and any(p.name != LOCK_NAME for p in folder.path.iterdir()):
        raise UserError(f"{folder.path}: already exists and is not empty; delete it or pass "
                        "--out DIR for the new classifier")
    if not config.data.test:
        raise UserError("data.test: not set; the classifier reports its accuracy on the test "
                        "split: add data.test to the config or pass --set data.test=FILE")
    if not config.model.pretrained:
        raise UserError("model.pretrained: not set; the classifier starts from the same "
                        "pretrained BERT as the generator (--set model.pretrained=DIR)")
    started = time.time()
    pretrained = open_pretrained(config.model.pretrained, config.model.format)
    token_dict = read_vocab(pretrained.vocab_path)
    tokenizer = TextTokenizer(token_dict, config.model.lower_case)
    examples, stats, labels = read_train_labels(config)
    splits = {"train": load_split("train", config.data.train, config, tokenizer, labels,
                                  examples, stats)}
    for name in ("valid", "test"):
        path = getattr(config.data, name)
        if path:
            splits[name] = load_split(name, path, config, tokenizer, labels)
    for split in splits.values():
        say(split.describe())
    t = config.train
    # The generator's model settings, less what only the conditional LM has.
    lm = model_config_for(pretrained.config, config, len(labels), len(token_dict))
    model_config = ClassifierConfig(
        **{f.name: getattr(lm, f.name) for f in dataclasses.fields(ClassifierConfig)
           if hasattr(lm, f.name)},
        max_length=config.data.max_length, lower_case=config.model.lower_case)
    check_max_length(config, model_config.max_position)

    tf.random.set_seed(t.seed)  # dropout masks: the same in every fresh process
    model = build_classifier(model_config)
    load_bert_weights(model, pretrained.variables(), str(pretrained.weights_path))
    predict = _predictor(model)
    epochs, kept = _fit(model, predict, splits, labels, tokenizer.pad_id, t, say, progress)
    test = _accuracy(predict, splits["test"], labels, tokenizer.pad_id, t.batch_size)
    report = {"labels": labels, "pretrained": str(pretrained.directory),
              "steps": sum(e["steps"] for e in epochs), "epochs": epochs,
              "kept_epoch": kept, "test": test,
              "seconds": round(time.time() - started, 1)}
    _save(folder, config, model_config, labels, token_dict, model, report)
    return report


def _fit(model, predict, splits, labels, pad_id, t, say, progress):
    """The training loop.  Leaves the model at the epoch with the best valid
    accuracy (the last epoch without valid data); returns the per-epoch log and
    the epoch kept."""
    train = splits["train"].encoded
    lengths = [len(x) for x in train.token_ids]

    def plan(epoch):
        return batching.epoch_batches(lengths, t.batch_size, t.seed, epoch, t.bucket_by_length,
                                      t.batch_tokens)

    total = sum(len(plan(e)) for e in range(t.epochs))
    total = min(total, t.max_steps) if t.max_steps else total
    schedule = WarmupLinearDecay(t.learning_rate, total, round(t.warmup_ratio * total))
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=t.weight_decay)
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY))
    variables = model.trainable_variables

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32),
                                  tf.TensorSpec([None], tf.int32)])
    def step(tokens, targets):
        with tf.GradientTape() as tape:
            logits = model(tokens, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits))
        grads = tape.gradient(loss, variables)
        if t.clip_norm:
            grads, _ = tf.clip_by_global_norm(grads, t.clip_norm)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    epochs, done, kept, best, best_weights = [], 0, None, -1.0, None
    bar = tqdm(total=total, unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for epoch in range(t.epochs):
            bar.set_description(f"classifier epoch {epoch + 1}/{t.epochs}")
            losses = []
            for rows in plan(epoch)[:total - done]:
                tokens, targets = batching.pad_batch(train.token_ids, train.label_ids, rows,
                                                     pad_id)
                losses.append(float(step(tokens, targets)))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if not losses:
                break  # train.max_steps reached
            done += len(losses)
            entry = {"epoch": epoch + 1, "steps": len(losses),
                     "train_loss": sum(losses) / len(losses)}
            line = f"classifier epoch {epoch + 1}: train loss {entry['train_loss']:.4f}"
            if "valid" in splits:
                valid = _accuracy(predict, splits["valid"], labels, pad_id, t.batch_size)
                entry.update(valid_accuracy=valid["micro"], valid_macro_accuracy=valid["macro"])
                line += f", valid accuracy {valid['micro']:.4f}"
                if valid["micro"] > best:  # the first of equal epochs stays
                    kept, best, best_weights = epoch + 1, valid["micro"], model.get_weights()
            else:
                kept = epoch + 1
            epochs.append(entry)
            (tqdm.write if progress else say)(line)
    finally:
        bar.close()
    if best_weights is not None and kept != len(epochs):
        model.set_weights(best_weights)
    return epochs, kept


def _save(folder, config, model_config, labels, token_dict, model, report):
    """Write the folder; report.json last, so an interrupted save is incomplete."""
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder.config, config.to_yaml())
        write_text_atomic(folder.model_config,
                          json.dumps(dataclasses.asdict(model_config), indent=2) + "\n")
        write_text_atomic(folder.labels, json.dumps(labels, ensure_ascii=False, indent=2) + "\n")
        write_vocab(folder.vocab, token_dict)
        tf.train.Checkpoint(model=model).write(str(folder.weights))
        write_text_atomic(folder.report,
                          json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    except OSError as e:
        shutil.rmtree(folder.path, ignore_errors=True)
        raise UserError(f"{folder.path}: cannot write the classifier ({e.strerror})") from None
