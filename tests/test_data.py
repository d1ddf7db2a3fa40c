import json

import numpy as np
import pytest

from cln_textgen.data import batching
from cln_textgen.data.examples import (build_label_vocab, check_labels, encode_examples, read_examples,
                              split_long_text, split_sentences)
from cln_textgen.errors import UserError


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def test_tsv_with_header_empty_lines_and_tabs_in_text(tmp_path):
    path = write(tmp_path, "d.tsv", "text\tlabel\n很好\t1\n\n有\t制表符\t0\n  \t1\n")
    examples, stats = read_examples(path)
    assert [(e.text, e.label, e.line) for e in examples] == [("很好", "1", 2), ("有\t制表符", "0", 4)]
    assert stats.empty_skipped == 2 and stats.examples == 2


def test_jsonl(tmp_path):
    lines = [{"text": "好", "label": "pos"}, {"text": "差", "label": 0}, {}]
    content = "\n".join(json.dumps(x, ensure_ascii=False) for x in lines[:2]) + "\n\n"
    examples, stats = read_examples(write(tmp_path, "d.jsonl", content))
    assert [(e.text, e.label) for e in examples] == [("好", "pos"), ("差", "0")]
    assert stats.empty_skipped == 1


@pytest.mark.parametrize("name,content,message", [
    ("a.tsv", "好\t1\n没有标签\n", r"a.tsv:2: no label; each line must be text<TAB>label"),
    ("b.tsv", b"\xe5\xa5\xbd\t1\n\xff\xfe\t0\n", r"b.tsv:2: invalid UTF-8"),
    ("c.tsv", "", r"c.tsv: no examples"),
    ("d.tsv", "\n\n", r"d.tsv: no examples"),
    ("e.tsv", "好\t\n", r"e.tsv:1: empty label"),
    ("f.jsonl", '{"text": "好"}\n', r"f.jsonl:1: a line needs both"),
    ("g.jsonl", '{"text": "好", "label": 1}\n{oops\n', r"g.jsonl:2: invalid JSON"),
    ("h.csv", "好,1\n", r"h.csv: cannot tell the format"),
])
def test_errors_name_file_and_line(tmp_path, name, content, message):
    with pytest.raises(UserError, match=message):
        read_examples(write(tmp_path, name, content))


def test_label_column_in_the_wrong_place(tmp_path):
    rows = [f"{i % 2}\t这是第{i}条很长的评论，写得很认真也很长很长很长" for i in range(30)]
    with pytest.raises(UserError, match=r"w.tsv:1: the label column seems to come first"):
        read_examples(write(tmp_path, "w.tsv", "\n".join(rows) + "\n"))


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        read_examples(tmp_path / "none.tsv")


def test_label_vocabulary(tmp_path):
    examples, _ = read_examples(write(tmp_path, "d.tsv", "a\t10\nb\t2\nc\t2\nd\t1\n"))
    assert build_label_vocab(examples) == ["1", "2", "10"]
    assert build_label_vocab(examples, ["10", "2", "1", "7"]) == ["10", "2", "1", "7"]
    with pytest.raises(UserError, match="label '10' is not in data.labels"):
        build_label_vocab(examples, ["1", "2"])
    valid, _ = read_examples(write(tmp_path, "v.tsv", "x\t1\ny\t3\n"))
    with pytest.raises(UserError, match=r"v.tsv:2: label '3' does not occur in the training data"):
        check_labels(valid, ["1", "2", "10"], tmp_path / "v.tsv", "train.tsv")


def test_sentence_splitting():
    assert split_sentences("好的。很好！不错吗？ok") == ["好的。", "很好！", "不错吗？", "ok"]
    pieces = split_long_text("我很好。我很好。我很好。太长太长太长太长太长太长", len, 8)
    assert pieces == ["我很好。我很好。", "我很好。", "太长太长太长太长", "太长太长"]
    assert all(len(p) <= 8 for p in pieces)
    assert split_long_text("短的", len, 8) == ["短的"]


class CharTokenizer:
    def tokenize(self, text):
        return list(text)

    def encode(self, text, max_length=None):
        ids = [2] + [ord(c) % 50 + 5 for c in text] + [3]
        return ids if max_length is None or len(ids) <= max_length else ids[:max_length - 1] + [3]


def test_encode_splits_long_texts_and_keeps_labels(tmp_path):
    text = "第一句话很长。" * 4  # 28 characters
    examples, _ = read_examples(write(tmp_path, "d.tsv", f"{text}\tpos\n短\tneg\n"))
    encoded = encode_examples(examples, CharTokenizer(), ["neg", "pos"], max_length=16)
    assert encoded.pieces_from_long == 1
    assert encoded.label_ids == [1, 1, 0]
    assert all(len(t) <= 16 and t[0] == 2 and t[-1] == 3 for t in encoded.token_ids)
    assert sum(len(t) - 2 for t in encoded.token_ids) == 28 + 1


def test_batches_are_padded_per_batch():
    token_ids = [[2, 5, 3], [2, 5, 6, 7, 3], [2, 3], [2, 9, 9, 9, 9, 9, 9, 3]]
    tokens, labels = batching.pad_batch(token_ids, [0, 1, 0, 1], [0, 2], pad_id=0)
    assert tokens.shape == (2, 3) and tokens.dtype == np.int32
    assert tokens.tolist() == [[2, 5, 3], [2, 3, 0]] and labels.tolist() == [0, 0]


def test_epoch_order_is_deterministic_and_covers_everything():
    lengths = np.random.default_rng(0).integers(3, 60, 500)
    a = batching.epoch_batches(lengths, 16, seed=1, epoch=0)
    assert [x.tolist() for x in a] == [x.tolist() for x in batching.epoch_batches(lengths, 16, 1, 0)]
    b = batching.epoch_batches(lengths, 16, seed=1, epoch=1)
    assert [x.tolist() for x in a] != [x.tolist() for x in b]
    assert sorted(np.concatenate(a).tolist()) == list(range(500))


def test_bucketing_reduces_padding():
    lengths = np.random.default_rng(0).integers(3, 120, 2000)

    def padding(batches):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)

    plain = batching.epoch_batches(lengths, 32, 0, 0, bucket=False)
    bucketed = batching.epoch_batches(lengths, 32, 0, 0, bucket=True)
    assert padding(bucketed) < 0.2 * padding(plain)


def test_token_budget_batches():
    lengths = np.array([10] * 20 + [50] * 4)
    batches = batching.epoch_batches(lengths, 32, 0, 0, batch_tokens=100)
    assert all(len(b) * lengths[b].max() <= 100 or len(b) == 1 for b in batches)
    assert sorted(np.concatenate(batches).tolist()) == list(range(24))


def test_planned_steps_sum_the_epochs_up_to_max_steps():
    assert batching.planned_steps([4, 4, 3]) == 11
    assert batching.planned_steps(iter([4, 4, 3]), max_steps=6) == 6
    assert batching.planned_steps([4, 4], max_steps=20) == 8


@pytest.mark.parametrize("content,message", [
    ("好\tpos\n差\tn\x1beg\n", "d.tsv:2: label 'n\\x1beg' contains the control character U+001B"),
    ("好\tpo\x00s\n", "d.tsv:1: label 'po\\x00s' contains the control character U+0000"),
    ("好\tall\n差\tneg\n", "d.tsv:1: the label 'all' is reserved"),
    ("好\tpos\r差\tneg\r", "d.tsv:1: a carriage return (CR) without a line feed"),
])
def test_bad_labels_and_line_endings_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path, "d.tsv", content)
    with pytest.raises(UserError) as e:
        build_label_vocab(read_examples(path)[0], source=str(path))
    assert message in str(e.value)


def test_label_with_a_newline_in_jsonl(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"text": "好", "label": "a\\nb"}\n')
    with pytest.raises(UserError, match=r"d.jsonl:1: label 'a\\nb' contains the control character U\+000A"):
        build_label_vocab(read_examples(path)[0], source=str(path))


def test_label_sorting_takes_unicode_digits_as_names(tmp_path):
    examples = read_examples(write(tmp_path, "d.tsv", "a\t²\nb\t①\nc\t10\nd\t2\ne\tx\n"))[0]
    assert build_label_vocab(examples) == ["2", "10", "x", "²", "①"]
    with pytest.raises(UserError, match="data.labels: the label 'all' is reserved"):
        build_label_vocab(examples, fixed=["²", "①", "10", "2", "x", "all"])
