"""Fine-tuning the label classifier with the generator's training loop.

The classifier is one more task of :class:`~cln_textgen.training.trainer.Trainer`
(:mod:`cln_textgen.training.task`):
:class:`ClassifierTask` supplies the model (a plain BERT with a softmax layer,
:func:`~cln_textgen.evaluation.classifier.build_classifier`), its loss (cross-entropy
of each text's label) and its evaluation (valid loss and accuracy), and the
trainer brings what the generator has: resume from the classifier folder's
checkpoints, gradient accumulation, XLA, mixed precision, tf.distribute,
early stopping (``train.patience``) and the best checkpoint on valid loss.
The learning rate and epochs come from the ``classifier`` section, every
other setting from ``train``.
"""

import dataclasses
import json
import shutil
import time

import numpy as np

from cln_textgen.backend import tf
from cln_textgen.data.corpus import load_split, read_train_labels
from cln_textgen.errors import UserError
from cln_textgen.evaluation.classifier import (ClassifierConfig, ClassifierDir, accuracy,
                                               build_classifier, predictor)
from cln_textgen.model.bert_weights import load_bert_weights
from cln_textgen.model.modeling import BertShape
from cln_textgen.model.pretrained import open_pretrained
from cln_textgen.model.tokenization import TextTokenizer, read_vocab, write_vocab
from cln_textgen.runs import checkpoints
from cln_textgen.runs.folder import write_text_atomic
from cln_textgen.runs.lock import LOCK_NAME
from cln_textgen.tasks.labelled import LabelledRows
from cln_textgen.tasks.lm_start import check_max_length
from cln_textgen.training import distribute
from cln_textgen.training.trainer import Trainer


class LabelLoss:
    """``loss(tokens, labels)``: the summed cross-entropy of the label of each
    real row (filler rows, added for the replicas, are ``[CLS]`` then padding)."""

    def __init__(self, model, pad_id):
        self.model, self.pad_id = model, pad_id

    def __call__(self, tokens, labels):
        logits = tf.cast(self.model(tokens, training=True), tf.float32)
        real = tf.cast(tf.not_equal(tokens[:, 1], self.pad_id), tf.float32)
        return tf.reduce_sum(real * tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))


@dataclasses.dataclass
class ClassifierEval:
    loss: float
    accuracy: dict  # from classifier.accuracy: micro, macro, per_label, examples, confusion

    def log_fields(self):
        return {"valid_loss": self.loss, "valid_accuracy": self.accuracy["micro"],
                "valid_macro_accuracy": self.accuracy["macro"]}

    def describe(self):
        return (f"valid loss {self.loss:.4f}, accuracy {self.accuracy['micro']:.4f} "
                f"(macro {self.accuracy['macro']:.4f})")


@dataclasses.dataclass
class ClassifierTask(LabelledRows):
    """The classifier as a task of the training loop (see training/trainer.py)."""

    run: ClassifierDir
    config: object  # config.Config whose train section holds the classifier's schedule
    model_config: ClassifierConfig
    tokenizer: TextTokenizer
    labels: list
    train: object  # corpus.Split
    valid: object  # corpus.Split or None
    test: object  # corpus.Split
    pretrained: object  # pretrained.PretrainedBert
    checkpoint: str = None  # the checkpoint to resume from (the newest that reads back)
    _predict: object = None

    def make_batch(self, indices, step, micro, length_multiple=1, rows_multiple=1):
        del step, micro  # the labels are the targets: nothing is drawn per step
        return self.padded(indices, length_multiple, rows_multiple)

    def samples(self, model):
        return []

    def build_model(self, dropout_seed):
        del dropout_seed  # bert4keras's own dropout layers, seeded by train.seed
        return build_classifier(self.model_config)

    def warm_start(self, model):
        return load_bert_weights(model, self.pretrained.variables(),
                                 str(self.pretrained.weights_path))

    def training_loss(self, model, gather):
        del gather  # one prediction per row: nothing to gather
        return LabelLoss(model, self.tokenizer.pad_id)

    def count_targets(self, batch):
        return int(np.count_nonzero(batch[0][:, 1] != self.tokenizer.pad_id))

    def evaluate(self, model):
        if self._predict is None:
            self._predict = predictor(model)
        result = accuracy(self._predict, self.valid, self.labels, self.tokenizer.pad_id,
                          self.config.train.batch_size)
        return ClassifierEval(result.pop("loss"), result)


def train_classifier(config, out, say=print, progress=True):
    """Fine-tune on ``data.train`` (resuming from ``out``'s checkpoints), keep the
    checkpoint with the best valid loss (the last one without ``data.valid``),
    test on ``data.test``, save into ``out``; returns the report dict."""
    started = time.time()
    task = _start(config, ClassifierDir(out), say)
    tf.random.set_seed(task.config.train.seed)  # dropout masks: the same in every fresh process
    trainer = Trainer(task, console=say, progress=progress)
    restored = trainer.restore_or_warm_start()
    if restored:
        say(f"resuming from {restored}: step {trainer.step}")
    else:
        say(f"new classifier from {task.pretrained.directory}: "
            f"{task.model_config.num_hidden_layers} layers x {task.model_config.hidden_size}, "
            f"{trainer.total_steps} steps planned")
    status = trainer.fit()
    events = [json.loads(line) for line in
              task.run.metrics.read_text(encoding="utf-8").splitlines()]
    evals = [e for e in events if e["event"] == "eval"]
    kept = {"epoch": int(trainer.epoch.numpy()), "step": trainer.step}
    if task.run.best_checkpoint():  # the first of equal valid losses, as the trainer keeps
        trainer.checkpoint.restore(task.run.best_checkpoint())
        kept = min(evals, key=lambda e: e["valid_loss"])
    test = accuracy(predictor(trainer.model), task.test, task.labels, task.tokenizer.pad_id,
                    task.config.train.batch_size)
    report = {"labels": task.labels, "pretrained": str(task.pretrained.directory),
              "status": status, "steps": trainer.step, "epochs": _epochs(events),
              "kept_epoch": kept["epoch"], "kept_step": kept["step"], "test": test,
              "seconds": round(time.time() - started, 1)}
    if trainer.chief:
        _save(task.run, trainer.model, report)
    return report


def _start(config, folder, say):
    """Check everything, then write the folder's config, model, labels and vocabulary."""
    if not config.data.test:
        raise UserError("data.test: not set; the classifier reports its accuracy on the test "
                        "split: add data.test to the config or pass --set data.test=FILE")
    if not config.model.pretrained:
        raise UserError("model.pretrained: not set; the classifier starts from the same "
                        "pretrained BERT as the generator (--set model.pretrained=DIR)")
    if folder.is_complete():
        raise UserError(f"{folder.path}: holds a trained classifier already; delete it or pass "
                        "--out DIR for a new one")
    resume = folder.has_checkpoints()
    if not resume and folder.path.exists() and any(p.name != LOCK_NAME
                                                    for p in folder.path.iterdir()):
        raise UserError(f"{folder.path}: already exists and is not empty; delete it or pass "
                        "--out DIR for the new classifier")
    pretrained = open_pretrained(config.model.pretrained, config.model.format)
    token_dict = read_vocab(pretrained.vocab_path)
    tokenizer = TextTokenizer(token_dict, config.model.lower_case)
    examples, stats, labels = read_train_labels(config)
    train = load_split("train", config.data.train, config, tokenizer, labels, examples, stats)
    splits = {name: load_split(name, getattr(config.data, name), config, tokenizer, labels)
              for name in ("valid", "test") if getattr(config.data, name)}
    for split in [train, *splits.values()]:
        say(split.describe())
    m = config.model
    model_config = ClassifierConfig(
        **BertShape.shape_from_google(pretrained.config, len(token_dict)),
        num_labels=len(labels), max_length=config.data.max_length, lower_case=m.lower_case,
        dropout=m.dropout, attention_dropout=m.attention_rate, seed=config.train.seed)
    check_max_length(config, model_config.max_position)
    schedule = dataclasses.replace(config.train, learning_rate=config.classifier.learning_rate,
                                   epochs=config.classifier.epochs)
    config = dataclasses.replace(config, train=schedule)
    if resume:
        saved = ClassifierConfig(**folder.read_json(folder.model_config))
        if saved != model_config or folder.read_json(folder.labels) != labels:
            raise UserError(f"{folder.path}: its checkpoints belong to another model or label "
                            "list; delete it or pass --out DIR for a new classifier")
    elif distribute.chief_by_tf_config(schedule.distribute):
        _write_start(folder, config, model_config, labels, token_dict)
    checkpoint = None
    if resume:
        checkpoint = checkpoints.require_readable(
            folder.checkpoints, "delete the folder or pass --out DIR for a new classifier")
    return ClassifierTask(folder, config, model_config, tokenizer, labels, train,
                          splits.get("valid"), splits["test"], pretrained, checkpoint)


def _write_start(folder, config, model_config, labels, token_dict):
    try:
        folder.path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder.config, config.to_yaml())
        write_text_atomic(folder.model_config,
                          json.dumps(dataclasses.asdict(model_config), indent=2) + "\n")
        write_text_atomic(folder.labels, json.dumps(labels, ensure_ascii=False, indent=2) + "\n")
        write_vocab(folder.vocab, token_dict)
    except OSError as e:
        shutil.rmtree(folder.path, ignore_errors=True)
        raise UserError(f"{folder.path}: cannot write the classifier ({e.strerror})") from None


def _epochs(events):
    """Per epoch: the mean logged train loss and the valid figures at its end."""
    out = []
    for epoch in sorted({e["epoch"] for e in events if e["event"] == "train"}):
        losses = [e["loss"] for e in events if e["event"] == "train" and e["epoch"] == epoch]
        entry = {"epoch": epoch + 1, "train_loss": sum(losses) / len(losses)}
        # An eval's epoch counts the epochs done: the first with epoch + 1 is this one's end.
        ends = [e for e in events if e["event"] == "eval" and e["epoch"] == epoch + 1]
        if ends:
            entry.update({k: ends[0][k] for k in ("step", "valid_loss", "valid_accuracy",
                                                   "valid_macro_accuracy")})
        out.append(entry)
    return out


def _save(folder, model, report):
    """The weights, then report.json: an interrupted save leaves the folder incomplete."""
    try:
        tf.train.Checkpoint(model=model).write(str(folder.weights))
        write_text_atomic(folder.report, json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    except OSError as e:
        raise UserError(f"{folder.path}: cannot write the classifier ({e.strerror})") from None

