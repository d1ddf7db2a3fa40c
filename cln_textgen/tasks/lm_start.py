"""Starting or resuming a conditional-LM run: everything is checked before
anything is written (the rules of :mod:`cln_textgen.runs.opening`).

A folder with checkpoint files is resumed after its own files (manifest.json),
its config's frozen fields and its data (data.json) were checked.  A new run
opens the pretrained BERT and reads and encodes the data first; only when all
of that succeeded does it write ``vocab.txt``, ``labels.json``, ``model.json``,
``data.json`` and then ``config.yaml``.
"""

import json

from cln_textgen.data.corpus import load_split, read_train_labels
from cln_textgen.errors import UserError
from cln_textgen.model.modeling import ModelConfig
from cln_textgen.model.pretrained import open_pretrained
from cln_textgen.model.tokenization import TextTokenizer, read_vocab, simplify_vocab
from cln_textgen.runs import checkpoints, opening
from cln_textgen.runs.fingerprint import DATA_NAME, check_data_unchanged, split_fingerprint
from cln_textgen.runs.folder import SETUP_FILES, RunDir, check_resume_compatible
from cln_textgen.tasks.lm import LanguageModelTask
from cln_textgen.training.distribute import chief_by_tf_config


def check_max_length(config, max_position):
    if config.data.max_length > max_position:
        raise UserError(f"data.max_length: {config.data.max_length} is longer than the BERT's "
                        f"{max_position} positions; lower it")


def model_config_for(bert_config, config, num_labels, vocab_size):
    """The model a config asks of a pretrained BERT's config (``model.json``)."""
    return ModelConfig.from_section(bert_config, config.model, num_labels, vocab_size,
                                    config.train.seed)


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
    return opening.start(run, writes, fresh, lambda w: _resume(run, config, source, w),
                         lambda w: _new_run(run, config, w), SETUP_FILES)


def _resume(run, config, source, writes):
    opening.check_setup_files(run, ("config.yaml", "model.json", "labels.json", "vocab.txt"))
    saved, model_config, labels = run.check()
    # The network decides: a run from before label dropout has no null row.
    saved.model.label_dropout = model_config.label_dropout
    same_data = check_data_unchanged(run.path, config, source)
    check_resume_compatible(saved, config, run.config, source, data_fingerprint=same_data)
    checkpoint = opening.resume_checkpoint(run, writes)
    tokenizer = TextTokenizer.from_file(run.vocab, config.model.lower_case)
    train, valid = _load_splits(config, tokenizer, labels)
    if writes:
        # Training fields may have changed; a run made before data.json gets one now.
        opening.write_run_files(run, {run.config: config.to_yaml(),
                                      run.path / DATA_NAME: _data_json(train, valid, labels)})
    return LanguageModelTask(run, config, model_config, tokenizer, labels, train, valid,
                             resumed=True, checkpoint=checkpoint)


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

    setup = LanguageModelTask(run, config, model_config, tokenizer, labels, train, valid,
                              resumed=False, pretrained=pretrained, keep_tokens=keep_tokens)
    if not writes:
        return setup
    checkpoints.remove_temp_leftovers(run.checkpoints, run.best_checkpoints)
    tokens = sorted(token_dict, key=token_dict.get)
    # config.yaml last: until it exists the folder is a setup cut short, set up again.
    opening.write_run_files(run, {
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


def _load_splits(config, tokenizer, labels, examples=None, stats=None):
    train = load_split("train", config.data.train, config, tokenizer, labels, examples, stats)
    valid = None
    if config.data.valid:
        valid = load_split("valid", config.data.valid, config, tokenizer, labels)
    return train, valid
