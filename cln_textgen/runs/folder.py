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
"""

import json
import os
from pathlib import Path

import yaml

from cln_textgen.config import config_from_dict
from cln_textgen.errors import UserError


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

    def latest_checkpoint(self):
        return _latest(self.checkpoints)

    def best_checkpoint(self):
        return _latest(self.best_checkpoints)

    def read_config(self):
        try:
            data = yaml.safe_load(self.config.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise UserError(f"{self.config}: unreadable run config ({e})") from None
        return config_from_dict(data or {}, str(self.config))

    def read_labels(self):
        try:
            return json.loads(self.labels.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"{self.labels}: unreadable label list ({e})") from None

    def write_labels(self, labels):
        write_text_atomic(self.labels, json.dumps(labels, ensure_ascii=False, indent=2) + "\n")


def _latest(directory):
    from cln_textgen.backend import tf

    if not Path(directory).is_dir():
        return None
    return tf.train.latest_checkpoint(str(directory))


def write_text_atomic(path, text):
    """Write via a temporary file and rename, so a crash leaves old or new, never half."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def open_run(path):
    """A run folder that must exist and hold a started run."""
    run = RunDir(path)
    if not run.path.is_dir():
        raise UserError(f"{run.path}: run folder not found; pass the run_dir of a training run")
    if not run.is_initialised():
        raise UserError(f"{run.path}: not a run folder (config.yaml, model.json, labels.json and "
                        "vocab.txt expected); train into it first")
    return run


# Fields that fix what a run's checkpoints mean: a resumed run must keep them.
FROZEN_FIELDS = (
    "model.conditional", "model.label_embedding_size", "model.cond_hidden_units",
    "model.dropout", "model.attention_dropout", "model.simplified_vocab", "model.lower_case",
    "data.train", "data.format", "data.max_length", "data.labels",
    "train.seed", "train.batch_size", "train.batch_tokens", "train.bucket_by_length",
    "train.accumulate_steps",
)


def check_resume_compatible(saved, new, saved_path, new_source):
    """The saved config wins on frozen fields; a different value is an error."""
    for key in FROZEN_FIELDS:
        section, name = key.split(".")
        old = getattr(getattr(saved, section), name)
        value = getattr(getattr(new, section), name)
        if old != value:
            raise UserError(
                f"{new_source}: {key} is {value!r} but the run in {saved_path.parent} was started "
                f"with {old!r}; a resumed run cannot change it: restore it or use a new run_dir"
            )
