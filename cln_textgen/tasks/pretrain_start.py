"""Starting or resuming a pretraining run: the run-folder rules of the
conditional LM's runs (:mod:`cln_textgen.runs.opening`), for raw text.

A new run opens the BERT to continue (``model.pretrained``) or the vocabulary
of a new one (``model.vocab``), reads, holds out, encodes and packs the text,
and only then writes ``vocab.txt``, ``model.json``, ``data.json`` (the
fingerprint of every text file) and ``config.yaml``.  A resumed run checks
those files, the frozen fields of its config and its text files first.
"""

import json
import os

from cln_textgen.data import text_corpus
from cln_textgen.errors import UserError
from cln_textgen.model.modeling import ModelConfig
from cln_textgen.model.pretrained import open_pretrained
from cln_textgen.model.tokenization import SPECIAL_TOKENS, TextTokenizer, read_vocab
from cln_textgen.pretrain_config import FROZEN_FIELDS
from cln_textgen.runs import opening
from cln_textgen.runs.fingerprint import DATA_NAME, check_files_unchanged, file_fingerprint
from cln_textgen.runs.folder import PretrainDir, check_resume_compatible
from cln_textgen.tasks.masked_lm import MaskedLMTask
from cln_textgen.training.distribute import chief_by_tf_config

SETUP_FILES = ("vocab.txt", "model.json", "data.json", "config.yaml", "manifest.json")


def start_pretraining(config, source, fresh=False):
    """Open ``config.run_dir`` for pretraining: resume it or set up a new run."""
    run = PretrainDir(config.run_dir)
    writes = chief_by_tf_config(config.train.distribute)
    return opening.start(run, writes, fresh, lambda w: _resume(run, config, source, w),
                         lambda w: _new_run(run, config, w), SETUP_FILES)


def data_paths(config):
    """``{data.json key: path}`` of every text file the run reads."""
    d = config.data
    return {**{f"corpus[{i}]": path for i, path in enumerate(d.corpus)},
            **{f"held_out[{i}]": path for i, path in enumerate(d.held_out)}}


def _resume(run, config, source, writes):
    opening.check_setup_files(run, ("config.yaml", "model.json", "vocab.txt"))
    saved, model_config = run.check()
    check_files_unchanged(run.path, data_paths(config))
    if data_paths(saved).keys() != data_paths(config).keys():
        raise UserError(f"{source}: data.corpus and data.held_out name {len(config.data.corpus)} "
                        f"and {len(config.data.held_out)} files but the run in {run.path} read "
                        f"{len(saved.data.corpus)} and {len(saved.data.held_out)}; a resumed run "
                        "reads the same text: restore them or use a new run_dir")
    check_resume_compatible(saved, config, run.config, source, data_fingerprint=True,
                            frozen=FROZEN_FIELDS)
    checkpoint = opening.resume_checkpoint(run, writes)
    tokenizer = TextTokenizer.from_file(run.vocab, config.model.lower_case)
    task = _read_text(run, config, model_config, tokenizer, resumed=True)
    task.checkpoint = checkpoint
    if writes:  # training fields may have changed
        opening.write_run_files(run, {run.config: config.to_yaml()})
    return task


def _new_run(run, config, writes):
    m = config.model
    if not config.data.corpus:
        raise UserError("data.corpus: no text files; list them, e.g. data: {corpus: "
                        "[data/my_corpus.txt]} (one text a line)")
    pretrained = None
    if m.pretrained:
        pretrained = open_pretrained(m.pretrained, m.format)
        token_dict, bert_config = read_vocab(pretrained.vocab_path), pretrained.config
    elif m.vocab:
        token_dict = read_vocab(m.vocab)
        bert_config = {"vocab_size": len(token_dict), "hidden_size": m.hidden,
                       "num_hidden_layers": m.layers, "num_attention_heads": m.heads,
                       "intermediate_size": m.intermediate or 4 * m.hidden, "hidden_act": "gelu",
                       "max_position_embeddings": m.max_position, "layer_norm_eps": 1e-12}
    else:
        raise UserError("model: give model.pretrained (a BERT folder to continue pretraining) "
                        "or model.vocab (the vocab.txt of a new BERT, with model.layers, "
                        "model.hidden, model.heads)")
    missing = [t for t in SPECIAL_TOKENS if t not in token_dict]
    if missing:
        where = pretrained.vocab_path if pretrained else m.vocab
        raise UserError(f"{where}: lacks {', '.join(missing)}; masked-LM pretraining needs "
                        f"{' '.join(SPECIAL_TOKENS)} in the vocabulary")
    network = dict(conditional=False, label_dropout=0.0, num_labels=0, dropout=m.dropout,
                   attention_dropout=m.attention_rate)
    model_config = ModelConfig(**ModelConfig.shape_from_google(bert_config, len(token_dict)),
                               **network, seed=config.train.seed,
                               type_vocab_size=bert_config.get("type_vocab_size", 2))
    if config.data.max_length > model_config.max_position:
        raise UserError(f"data.max_length: {config.data.max_length} is longer than the BERT's "
                        f"{model_config.max_position} positions; lower it")
    tokenizer = TextTokenizer(token_dict, m.lower_case)
    task = _read_text(run, config, model_config, tokenizer, resumed=False)
    task.pretrained = pretrained
    if writes:
        paths = data_paths(config)
        fingerprints = {key: {**file_fingerprint(path), "texts": task.corpus["texts"][key]}
                        for key, path in paths.items()}
        tokens = sorted(token_dict, key=token_dict.get)
        # config.yaml last: until it exists the folder is a setup cut short, set up again.
        opening.write_run_files(run, {
            run.vocab: "".join(t + "\n" for t in tokens),
            run.model_config: json.dumps(model_config.to_dict(), indent=2) + "\n",
            run.path / DATA_NAME: json.dumps(fingerprints, ensure_ascii=False, indent=2) + "\n",
            run.config: config.to_yaml(),
        })
    return task


def _read_text(run, config, model_config, tokenizer, resumed):
    """The packed training rows and the held-out pieces, from the text files."""
    d = config.data
    texts = {key: text_corpus.read_texts(path, f"data.{key}")
             for key, path in data_paths(config).items()}
    corpus = [t for key in texts if key.startswith("corpus") for t in texts[key]]
    if d.held_out:
        held = {_set_name(path): texts[f"held_out[{i}]"] for i, path in enumerate(d.held_out)}
    else:
        corpus, held_texts = text_corpus.hold_out(corpus, d.held_out_fraction)
        held = {"held_out": held_texts} if held_texts else {}
    # A held-out text must not reach training through any corpus file.
    excluded = {t for pieces in held.values() for t in pieces}
    kept = set(corpus) - excluded
    budget = d.max_length - 2
    train_ids = {key: [tokenizer.ids(t) for t in texts[key] if t in kept]
                 for key in texts if key.startswith("corpus")}
    train_pieces = text_corpus.pieces([ids for key in train_ids for ids in train_ids[key]],
                                      budget)
    if not train_pieces:
        raise UserError("data.corpus: no training text is left once the held-out texts are "
                        "taken out; add text or lower data.held_out_fraction")
    token_ids, segment_ids = text_corpus.pack_rows(train_pieces, d.max_length, tokenizer.cls_id,
                                                   tokenizer.sep_id, tokenizer.pad_id)
    held_pieces = {name: [p for p in text_corpus.pieces([tokenizer.ids(t) for t in held_texts],
                                                       budget) if p]
                   for name, held_texts in held.items()}
    stats = {"texts": {key: len(value) for key, value in texts.items()},
             "train_texts": sum(len(v) for v in train_ids.values()),
             "train_tokens": sum(len(p) for p in train_pieces),
             "file_tokens": {key: sum(map(len, v)) for key, v in train_ids.items()},
             "rows": len(token_ids), "density": float((token_ids != tokenizer.pad_id).mean()),
             "held_out": {name: {"texts": len(held[name]), "pieces": len(held_pieces[name])}
                          for name in held}}
    return MaskedLMTask(run, config, model_config, tokenizer, token_ids, segment_ids,
                        {name: p for name, p in held_pieces.items() if p}, stats, resumed)


def _set_name(path):
    """``data/zh/reviews.held_out.txt`` -> ``reviews``: a held-out set's name."""
    return os.path.basename(path).split(".")[0]
