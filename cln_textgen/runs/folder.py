"""The run folder: what a run writes, and loading a run from its path alone.

A run folder is self-contained::

    config.yaml      merged config the run was started with
    model.json       ModelConfig (rebuilds the network without the pretrained BERT)
    labels.json      label names in id order
    vocab.txt        the tokenizer vocabulary (simplified, if asked for)
    checkpoints/     latest checkpoints; checkpoints/best/ the best on valid loss
    metrics.jsonl    one JSON object per logged event
    samples/         generated samples per evaluation
    tensorboard/     TensorBoard event files
    loss.png         train/valid loss curves
    data.json        fingerprint of the training data (runs/fingerprint.py)
    manifest.json    sizes and hashes of the files above it (runs/manifest.py)
    .lock            held by the one process that writes the run (runs/lock.py)
"""

import dataclasses
import json
import os
from pathlib import Path

from cln_textgen.config import config_from_dict
from cln_textgen.errors import UserError
from cln_textgen.pretrain_config import pretrain_config_from_dict
from cln_textgen.runs import checkpoints
from cln_textgen.runs.files import write_text_atomic  # noqa: F401  (imported from here by others)
from cln_textgen.runs.manifest import verify_manifest
from cln_textgen.strict_yaml import short, yaml_data

# What starting a run writes, config.yaml last: a folder holding only some of
# these (a setup cut short) is set up again, not refused.
SETUP_FILES = ("vocab.txt", "labels.json", "model.json", "data.json", "config.yaml",
               "manifest.json")


class RunDir:
    def __init__(self, path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    model_config = property(lambda self: self.path / "model.json")
    labels = property(lambda self: self.path / "labels.json")
    vocab = property(lambda self: self.path / "vocab.txt")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best_checkpoints = property(lambda self: self.path / "checkpoints" / "best")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    samples = property(lambda self: self.path / "samples")
    tensorboard = property(lambda self: self.path / "tensorboard")
    plot = property(lambda self: self.path / "loss.png")

    def is_initialised(self):
        return all(p.is_file() for p in (self.config, self.model_config, self.labels, self.vocab))

    def has_checkpoints(self):
        return checkpoints.has_checkpoint_files(self.checkpoints)

    def latest_checkpoint(self):
        """The newest checkpoint that reads back (a skipped one is warned about)."""
        return checkpoints.newest_readable(self.checkpoints)

    def best_checkpoint(self):
        return checkpoints.newest_readable(self.best_checkpoints)

    def read_config(self):
        try:
            text = self.config.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{self.config}: unreadable run config ({e}); restore it") from None
        data = yaml_data(text, self.config)
        if not isinstance(data, dict):
            raise UserError(f"{self.config}: not a mapping of config keys; restore the run's config")
        return self.config_from_dict(data, str(self.config))

    @staticmethod
    def config_from_dict(data, source):
        return config_from_dict(data, source)

    def _json(self, path, what):
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: unreadable {what} ({short(str(e))}); restore it") from None

    def read_labels(self):
        labels = self._json(self.labels, "label list")
        if (not isinstance(labels, list) or not labels
                or not all(isinstance(x, str) and x for x in labels)):
            raise UserError(f"{self.labels}: must be a list of label names (strings), got "
                            f"{short(labels)}; restore it")
        if len(set(labels)) != len(labels):
            raise UserError(f"{self.labels}: names a label twice; restore it")
        return labels

    def read_model_config(self):
        from cln_textgen.model.modeling import ModelConfig

        values = self._json(self.model_config, "model config")
        fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
        required = {n for n, f in fields.items() if f.default is dataclasses.MISSING}
        if (not isinstance(values, dict) or set(values) - set(fields)
                or required - set(values)):
            raise UserError(f"{self.model_config}: not a model config (keys {', '.join(fields)} "
                            "expected); restore it")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "num_labels"):
            value = values.get(name, 1)
            least = 0 if name == "num_labels" else 1  # a pretraining run has no labels
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise UserError(f"{self.model_config}: {name} must be an integer >= {least}, got "
                                f"{short(value)}; restore it")
        return ModelConfig.from_dict(values)

    @staticmethod
    def has_valid(config):
        """Whether the run evaluates held-out data (a best checkpoint, patience)."""
        return bool(config.data.valid)

    def check_vocab(self, model_config):
        from cln_textgen.model.tokenization import read_vocab

        size = len(read_vocab(self.vocab))
        if size != model_config.vocab_size:
            raise UserError(f"{self.vocab}: {size} tokens but the model was built for "
                            f"{model_config.vocab_size} ({self.model_config}); restore it")

    def write_labels(self, labels):
        write_text_atomic(self.labels, json.dumps(labels, ensure_ascii=False, indent=2) + "\n")

    def check(self):
        """The run's own files, before anything uses them: unchanged since the run
        wrote them (manifest.json) and consistent with each other.  Returns
        ``(config, model_config, labels)``."""
        verify_manifest(self.path)
        config = self.read_config()
        model_config = self.read_model_config()
        labels = self.read_labels()
        if len(labels) != model_config.num_labels:
            raise UserError(f"{self.labels}: {len(labels)} labels but the model was built for "
                            f"{model_config.num_labels} ({self.model_config}); restore it")
        self.check_vocab(model_config)
        return config, model_config, labels


class PretrainDir(RunDir):
    """A pretraining run's folder: a run folder without labels (its config.yaml is
    a PretrainConfig), plus ``bert/``, the Google BERT folder it makes."""

    bert = property(lambda self: self.path / "bert")

    def is_initialised(self):
        return all(p.is_file() for p in (self.config, self.model_config, self.vocab))

    @staticmethod
    def config_from_dict(data, source):
        return pretrain_config_from_dict(data, source)

    @staticmethod
    def has_valid(config):
        return bool(config.data.held_out) or config.data.held_out_fraction > 0

    def read_labels(self):
        return []

    def check(self):
        """``(config, model_config)``, its files checked as :meth:`RunDir.check` does."""
        verify_manifest(self.path)
        config, model_config = self.read_config(), self.read_model_config()
        self.check_vocab(model_config)
        return config, model_config


def open_run(path):
    """A run folder that must exist and hold a started run."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise UserError(f"{run.path}: run folder not found; pass the run_dir of a training run")
    if not run.is_initialised():
        raise UserError(f"{run.path}: not a run folder (config.yaml, model.json, labels.json and "
                        "vocab.txt expected); train into it first")
    run.check()
    return run


# Fields that fix what a run's checkpoints mean: a resumed run must keep them.
FROZEN_FIELDS = (
    "model.init", "model.conditional", "model.label_dropout", "model.label_embedding_size",
    "model.cond_hidden_units",
    "model.dropout", "model.attention_dropout", "model.simplified_vocab", "model.lower_case",
    "data.format", "data.max_length", "data.labels",
    "train.seed", "train.batch_size", "train.batch_tokens", "train.bucket_by_length",
    "train.accumulate_steps",
)


def check_resume_compatible(saved, new, saved_path, new_source, data_fingerprint=False,
                            frozen=FROZEN_FIELDS):
    """The saved config wins on ``frozen`` fields; a different value is an error.

    ``data.train`` is compared by content (runs/fingerprint.py) when the run has
    a data fingerprint; a run without one keeps the older rule: the same path."""
    keys = frozen if data_fingerprint else frozen + ("data.train",)
    for key in keys:
        section, name = key.split(".")
        old = getattr(getattr(saved, section), name)
        value = getattr(getattr(new, section), name)
        if key == "data.train" and old and value and os.path.realpath(old) == os.path.realpath(value):
            continue  # the same file, spelled another way
        if old != value:
            raise UserError(
                f"{new_source}: {key} is {value!r} but the run in {saved_path.parent} was started "
                f"with {old!r}; a resumed run cannot change it: restore it or use a new run_dir"
            )
