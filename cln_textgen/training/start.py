"""Starting or resuming a run: everything is checked before anything is written.

A new run opens the pretrained BERT and reads and encodes the data first; only
when all of that succeeded does it write ``config.yaml``, ``model.json``,
``labels.json`` and ``vocab.txt``, so a user error never leaves a half-made run
folder.  A folder with checkpoints is resumed: its saved config decides the
architecture, the data and the label list.
"""

import dataclasses
import shutil

from cln_textgen.data import batching
from cln_textgen.data.corpus import load_split, read_train_labels
from cln_textgen.errors import UserError
from cln_textgen.model.modeling import ModelConfig, build_model, load_bert_weights
from cln_textgen.model.pretrained import open_pretrained
from cln_textgen.runs.folder import RunDir, check_resume_compatible, write_text_atomic
from cln_textgen.model.tokenization import TextTokenizer, read_vocab, simplify_vocab, write_vocab
from cln_textgen.training.step import NextTokenLoss, make_scorer, split_loss


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

    # The task of the training loop (see training/trainer.py): the model, its
    # loss and its evaluation.

    def build_model(self, dropout_seed):
        return build_model(self.model_config, dropout_seed)

    def training_loss(self, model, gather):
        return NextTokenLoss(model, self.tokenizer.pad_id, gather)

    def count_targets(self, tokens):
        return batching.real_targets(tokens, self.tokenizer.pad_id)

    def evaluate(self, model, split):
        """Token-weighted valid loss and perplexity, in all and per label."""
        if self.scorer is None:
            self.scorer = make_scorer(model, self.tokenizer.pad_id, self.config.train.batch_size)
        encoded = split.encoded
        return split_loss(self.scorer, encoded.token_ids, encoded.label_ids, self.labels)

    def warm_start(self, model):
        """Load the pretrained BERT into a freshly built model (new runs only)."""
        self.mlm_loaded = load_bert_weights(model, self.pretrained.variables(),
                                            str(self.pretrained.weights_path), self.keep_tokens)
        return self.mlm_loaded

    def describe_warm_start(self):
        """The loader's report on the output layer, for the new-run log."""
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
        dropout=m.dropout,
        attention_dropout=m.dropout if m.attention_dropout is None else m.attention_dropout,
        seed=config.train.seed,
    )


def start_run(config, source, writes=True):
    """Open ``config.run_dir`` for training: resume it or set up a new run.

    ``writes=False`` (the non-chief workers of a multi-worker run) prepares the
    same setup without touching the folder, which the chief alone writes.
    """
    run = RunDir(config.run_dir)
    if run.latest_checkpoint():
        return _resume(run, config, source, writes)
    if writes and run.path.exists() and any(run.path.iterdir()) and not run.config.is_file():
        raise UserError(f"{run.path}: run_dir exists and is not a run folder; choose another "
                        "run_dir or empty it")
    return _new_run(run, config, writes)


def _resume(run, config, source, writes):
    saved = run.read_config()
    check_resume_compatible(saved, config, run.config, source)
    model_config = ModelConfig.load(run.model_config)
    labels = run.read_labels()
    tokenizer = TextTokenizer.from_file(run.vocab, config.model.lower_case)
    train, valid = _load_splits(config, tokenizer, labels)
    if writes:
        write_text_atomic(run.config, config.to_yaml())  # training fields may have changed
    return RunSetup(run, config, model_config, tokenizer, labels, train, valid, resumed=True)


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
    created = not run.path.exists()
    try:
        run.path.mkdir(parents=True, exist_ok=True)
        for stale in (run.checkpoints, run.samples, run.tensorboard):
            shutil.rmtree(stale, ignore_errors=True)  # a run that died before its first save
        run.metrics.unlink(missing_ok=True)
        write_vocab(run.vocab, token_dict)
        run.write_labels(labels)
        model_config.save(run.model_config)
        write_text_atomic(run.config, config.to_yaml())
    except OSError as e:
        if created:
            shutil.rmtree(run.path, ignore_errors=True)
        raise UserError(f"{run.path}: cannot write the run folder ({e.strerror})") from None
    return setup


def _load_splits(config, tokenizer, labels, examples=None, stats=None):
    train = load_split("train", config.data.train, config, tokenizer, labels, examples, stats)
    valid = None
    if config.data.valid:
        valid = load_split("valid", config.data.valid, config, tokenizer, labels)
    return train, valid
