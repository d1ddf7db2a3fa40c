"""Starting or resuming a run: everything is checked before anything is written.

A run folder is never deleted or overwritten implicitly.  The one process that
writes it holds its lock (runs/lock.py).  A folder with checkpoint files is
resumed from the newest checkpoint that reads back, after its own files
(manifest.json), its config's frozen fields and its data (data.json) were
checked; when none reads back, training stops naming the files.  ``--fresh``
is the explicit way to start over: the old folder is moved aside, not deleted.

A new run opens the pretrained BERT and reads and encodes the data first; only
when all of that succeeded does it write ``vocab.txt``, ``labels.json``,
``model.json``, ``data.json`` and then ``config.yaml`` (each atomically) and
``manifest.json``.  A setup cut short leaves some of these files and no
config.yaml: the next train sets the folder up again instead of refusing it.
"""

import dataclasses
import datetime
import hashlib
import json
import os

from cln_textgen.data import batching
from cln_textgen.data.corpus import load_split, read_train_labels
from cln_textgen.errors import UserError
from cln_textgen.model.modeling import ModelConfig, build_model, load_bert_weights
from cln_textgen.model.pretrained import open_pretrained
from cln_textgen.model.tokenization import TextTokenizer, read_vocab, simplify_vocab
from cln_textgen.runs import checkpoints
from cln_textgen.runs.fingerprint import DATA_NAME, check_data_unchanged, split_fingerprint
from cln_textgen.runs.folder import SETUP_FILES, RunDir, check_resume_compatible, write_text_atomic
from cln_textgen.runs.lock import LOCK_NAME, lock_folder
from cln_textgen.runs.manifest import write_manifest
from cln_textgen.training.distribute import chief_by_tf_config
from cln_textgen.training.step import NextTokenLoss, make_scorer, split_loss

# What a run writes before its first checkpoint besides SETUP_FILES: such a
# folder is a run that died early, not someone else's folder.
EARLY_FILES = (LOCK_NAME, "checkpoints", "metrics.jsonl", "samples", "tensorboard", "loss.png")
START_OVER = "start over with --fresh (moves this folder aside, deletes nothing)"


@dataclasses.dataclass
class RunSetup:
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

    # The task of the training loop (see training/trainer.py): the model, its
    # loss and its evaluation.

    def build_model(self, dropout_seed):
        return build_model(self.model_config, dropout_seed)

    def training_loss(self, model, gather):
        return NextTokenLoss(model, self.tokenizer.pad_id, gather)

    def count_targets(self, tokens):
        return batching.real_targets(tokens, self.tokenizer.pad_id)

    def training_labels(self, labels, step, micro):
        """The conditions a training batch is fed: its labels, with label dropout."""
        m = self.model_config
        if m.null_id is None:
            return labels
        return batching.drop_labels(labels, m.label_dropout, m.null_id, m.seed, step, micro)

    def evaluate(self, model, split):
        """Token-weighted valid loss and perplexity, in all and per label."""
        if self.scorer is None:
            self.scorer = make_scorer(model, self.tokenizer.pad_id, self.config.train.batch_size)
        encoded = split.encoded
        return split_loss(self.scorer, encoded.token_ids, encoded.label_ids, self.labels)

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


def check_max_length(config, max_position):
    if config.data.max_length > max_position:
        raise UserError(f"data.max_length: {config.data.max_length} is longer than the BERT's "
                        f"{max_position} positions; lower it")


def model_config_for(bert_config, config, num_labels, vocab_size):
    m = config.model
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=bert_config["hidden_size"],
        num_hidden_layers=bert_config["num_hidden_layers"],
        num_attention_heads=bert_config["num_attention_heads"],
        intermediate_size=bert_config["intermediate_size"],
        hidden_act=bert_config["hidden_act"],
        max_position=bert_config["max_position_embeddings"],
        layer_norm_eps=bert_config["layer_norm_eps"],
        num_labels=num_labels,
        label_embedding_size=m.label_embedding_size,
        cond_hidden_units=m.cond_hidden_units,
        conditional=m.conditional,
        label_dropout=m.label_dropout,
        dropout=m.dropout,
        attention_dropout=m.dropout if m.attention_dropout is None else m.attention_dropout,
        seed=config.train.seed,
    )


def start_run(config, source, writes=None, fresh=False):
    """Open ``config.run_dir`` for training: resume it or set up a new run.

    ``writes=False`` (the non-chief workers of a multi-worker run) prepares the
    same setup without touching the folder, which the chief alone writes (and
    locks); ``None`` decides by the same rule.  ``fresh`` moves a used folder
    aside first.
    """
    if writes is None:
        writes = chief_by_tf_config(config.train.distribute)
    run = RunDir(config.run_dir)
    if not writes:
        return _open(run, config, source, writes=False)
    lock = lock_folder(run.path, "this run")
    moved_to = None
    try:
        if fresh and _used(run):
            moved_to = run.path.with_name(
                f"{run.path.name}.old-{datetime.datetime.now():%Y%m%d-%H%M%S}")
            os.rename(run.path, moved_to)  # the lock moves with it; take the new folder's
            lock.release()
            lock = lock_folder(run.path, "this run")
        setup = _open(run, config, source, writes=True)
    except OSError as e:
        lock.release(remove_created=True)
        raise UserError(f"{run.path}: cannot write the run folder ({e.strerror})") from None
    except BaseException:
        lock.release(remove_created=True)
        raise
    setup.lock, setup.moved_to = lock, moved_to
    return setup


def _used(run):
    return run.path.is_dir() and any(p.name != LOCK_NAME for p in run.path.iterdir())


def _open(run, config, source, writes):
    if run.has_checkpoints():
        return _resume(run, config, source, writes)
    if writes and not run.config.is_file():
        foreign = sorted(p.name for p in run.path.iterdir()
                         if p.name not in SETUP_FILES + EARLY_FILES
                         and not (p.name.startswith(".") and p.name.endswith(".tmp")))
        if foreign:
            raise UserError(f"{run.path}: run_dir exists and is not a run folder ({foreign[0]} is "
                            "not a run's file); choose another run_dir, empty it, or pass --fresh "
                            "to move it aside")
    return _new_run(run, config, writes)


def _resume(run, config, source, writes):
    missing = [p.name for p in (run.config, run.model_config, run.labels, run.vocab)
               if not p.is_file()]
    if missing:
        raise UserError(f"{run.path}: has checkpoints but lacks {', '.join(missing)}; restore "
                        f"them from a backup, or {START_OVER}")
    saved, model_config, labels = run.check()
    # The network decides: a run from before label dropout has no null row.
    saved.model.label_dropout = model_config.label_dropout
    same_data = check_data_unchanged(run.path, config, source)
    check_resume_compatible(saved, config, run.config, source, data_fingerprint=same_data)
    checkpoint = checkpoints.require_readable(
        run.checkpoints, f"restore them from a backup, or {START_OVER}")
    tokenizer = TextTokenizer.from_file(run.vocab, config.model.lower_case)
    train, valid = _load_splits(config, tokenizer, labels)
    if writes:
        checkpoints.remove_temp_leftovers(run.checkpoints, run.best_checkpoints)
        checkpoints.repair_pointer(run.checkpoints, checkpoint)
        checkpoints.repair_pointer(run.best_checkpoints,
                                   checkpoints.newest_readable(run.best_checkpoints))
        # Training fields may have changed; a run made before data.json gets one now.
        _write_files(run, {run.config: config.to_yaml(),
                           run.path / DATA_NAME: _data_json(train, valid, labels)})
    return RunSetup(run, config, model_config, tokenizer, labels, train, valid, resumed=True,
                    checkpoint=checkpoint)


def _new_run(run, config, writes):
    if not config.model.pretrained:
        raise UserError("model.pretrained: not set; point it at a Google or Hugging Face BERT "
                        "directory (in the config file or with --set model.pretrained=DIR)")
    if not config.data.train:
        raise UserError("data.train: not set; point it at a TSV (text<TAB>label) or JSONL file")
    pretrained = open_pretrained(config.model.pretrained, config.model.format)
    token_dict = read_vocab(pretrained.vocab_path)
    keep_tokens = None
    if config.model.simplified_vocab:
        token_dict, keep_tokens = simplify_vocab(token_dict)
    tokenizer = TextTokenizer(token_dict, config.model.lower_case)
    examples, stats, labels = read_train_labels(config)
    train, valid = _load_splits(config, tokenizer, labels, examples, stats)
    model_config = model_config_for(pretrained.config, config, len(labels), len(token_dict))
    check_max_length(config, model_config.max_position)

    setup = RunSetup(run, config, model_config, tokenizer, labels, train, valid, resumed=False,
                     pretrained=pretrained, keep_tokens=keep_tokens)
    if not writes:
        return setup
    checkpoints.remove_temp_leftovers(run.checkpoints, run.best_checkpoints)
    tokens = sorted(token_dict, key=token_dict.get)
    # config.yaml last: until it exists the folder is a setup cut short, set up again.
    _write_files(run, {
        run.vocab: "".join(t + "\n" for t in tokens),
        run.labels: json.dumps(labels, ensure_ascii=False, indent=2) + "\n",
        run.model_config: json.dumps(model_config.to_dict(), indent=2) + "\n",
        run.path / DATA_NAME: _data_json(train, valid, labels),
        run.config: config.to_yaml(),
    })
    return setup


def _data_json(train, valid, labels):
    record = {"train": split_fingerprint(train, labels)}
    if valid is not None:
        record["valid"] = split_fingerprint(valid, labels)
    return json.dumps(record, ensure_ascii=False, indent=2) + "\n"


def _write_files(run, texts):
    """Write ``texts`` ({path: text}) in order, each atomically, and the manifest.

    The manifest accepts the new contents before they are written, and only them
    once they are: a crash at any point leaves a folder that opens."""
    changed = {path: text for path, text in texts.items()
               if not path.is_file() or path.read_bytes() != text.encode("utf-8")}
    if not changed and (run.path / "manifest.json").is_file():
        return
    write_manifest(run.path, also={path.name: hashlib.sha256(text.encode("utf-8")).hexdigest()
                                   for path, text in changed.items()})
    for path, text in changed.items():
        write_text_atomic(path, text)
    write_manifest(run.path)


def _load_splits(config, tokenizer, labels, examples=None, stats=None):
    train = load_split("train", config.data.train, config, tokenizer, labels, examples, stats)
    valid = None
    if config.data.valid:
        valid = load_split("valid", config.data.valid, config, tokenizer, labels)
    return train, valid
