"""Labelled text: reading TSV/JSONL, the label vocabulary, splitting long texts.

No TensorFlow here: this module turns files into ``Example`` lists and token
id lists; :mod:`cln_textgen.data.batching` makes batches of them.
"""

import dataclasses
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

from cln_textgen.errors import UserError, where

FORMATS = ("auto", "tsv", "jsonl")


@dataclasses.dataclass(frozen=True)
class Example:
    text: str
    label: str
    line: int  # 1-based line in the source file


@dataclasses.dataclass
class ReadStats:
    examples: int = 0
    empty_skipped: int = 0


def detect_format(path, fmt="auto"):
    if fmt != "auto":
        return fmt
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix in (".tsv", ".txt", ".tab", ".data"):
        return "tsv"
    raise UserError(f"{path}: cannot tell the format from the name; set data.format to "
                    "tsv (text<TAB>label) or jsonl ({\"text\": ..., \"label\": ...})")


def read_lines(path):
    """``(line_number, text)`` of a UTF-8 file, with clear errors."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: data file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lone_cr = re.search(rb"\r(?!\n)", raw)
    if lone_cr:
        line = raw.count(b"\n", 0, lone_cr.start()) + 1
        raise UserError(f"{where(path, line)}: a carriage return (CR) without a line feed: "
                        "old Mac line endings, or a stray CR in a text; save the file with \\n "
                        "(or \\r\\n) line endings")
    if raw.endswith(b"\n"):
        raw = raw[:-1]  # a final newline ends the last line; it is not an empty line
    for number, line in enumerate(raw.split(b"\n") if raw else [], start=1):
        try:
            yield number, line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise UserError(f"{where(path, number)}: invalid UTF-8 (byte {e.start + 1}); "
                            "save the file as UTF-8") from None


_HEADERS = {("text", "label"), ("sentence", "label"), ("content", "label"), ("review", "label")}


def _read_tsv(path, stats):
    examples = []
    for number, line in read_lines(path):
        if not line.strip():
            stats.empty_skipped += 1
            continue
        text, tab, label = line.rpartition("\t")
        if not tab:
            raise UserError(f"{where(path, number)}: no label; each line must be text<TAB>label")
        if number == 1 and (text.strip().lower(), label.strip().lower()) in _HEADERS:
            continue  # header line
        text, label = text.strip(), label.strip()
        if not label:
            raise UserError(f"{where(path, number)}: empty label after the TAB; each line must be "
                            "text<TAB>label")
        if not text:
            stats.empty_skipped += 1
            continue
        examples.append(Example(text, label, number))
    _check_columns(path, examples)
    return examples


def _check_columns(path, examples):
    """Catch ``label<TAB>text`` files: many distinct long 'labels', few distinct 'texts'."""
    if len(examples) < 20:
        return
    labels = Counter(e.label for e in examples)
    texts = Counter(e.text for e in examples)
    long_labels = sum(len(label) > 20 for label in labels)
    if len(labels) > len(examples) // 2 and len(texts) <= 20 and long_labels:
        first = examples[0]
        raise UserError(f"{where(path, first.line)}: the label column seems to come first "
                        f"({first.text!r} looks like a label); write text<TAB>label")


def _read_jsonl(path, stats):
    examples = []
    for number, line in read_lines(path):
        if not line.strip():
            stats.empty_skipped += 1
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where(path, number)}: invalid JSON ({e.msg}); each line must be "
                            '{"text": ..., "label": ...}') from None
        if not isinstance(record, dict) or "text" not in record or "label" not in record:
            raise UserError(f"{where(path, number)}: a line needs both \"text\" and \"label\" keys")
        text, label = record["text"], record["label"]
        if not isinstance(text, str):
            raise UserError(f"{where(path, number)}: \"text\" must be a string")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise UserError(f"{where(path, number)}: \"label\" must be a string or an integer")
        text, label = text.strip(), str(label).strip()
        if not label:
            raise UserError(f"{where(path, number)}: empty label")
        if not text:
            stats.empty_skipped += 1
            continue
        examples.append(Example(text, label, number))
    return examples


def read_examples(path, fmt="auto"):
    """All examples of a TSV or JSONL file, and how many empty lines were skipped."""
    fmt = detect_format(path, fmt)
    stats = ReadStats()
    reader = _read_tsv if fmt == "tsv" else _read_jsonl
    examples = reader(path, stats)
    if not examples:
        raise UserError(f"{path}: no examples (the file is empty or holds only blank lines)")
    stats.examples = len(examples)
    return examples, stats


# ------------------------------------------------------------ labels


_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: "²" and "①" are digits to str.isdigit
RESERVED_LABELS = ("all",)  # generate --label all means every label


def _label_order(label):
    # "2" < "10": numeric labels sort as numbers, the rest alphabetically after them.
    return (0, int(label), "") if _INTEGER.fullmatch(label) else (1, 0, label)


def check_label_name(label, source):
    """A label is a name on one line: no control characters, not a reserved word."""
    bad = next((c for c in label if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise UserError(f"{source}: label {label[:40]!r} contains the control character "
                        f"U+{ord(bad):04X}; labels are plain names: remove it")
    if label in RESERVED_LABELS:
        raise UserError(f"{source}: the label {label!r} is reserved (generate --label all means "
                        "every label); rename it in the data")


def build_label_vocab(examples, fixed=None, source="data.train"):
    """Label names in id order: ``fixed`` if given (checked), else sorted train labels."""
    first = {}
    for e in examples:
        first.setdefault(e.label, e.line)
    for label, line in first.items():
        check_label_name(label, where(source, line))
    for label in fixed or ():
        check_label_name(label, "data.labels")
    seen = sorted(first, key=_label_order)
    if fixed is None:
        return seen
    unknown = [label for label in seen if label not in fixed]
    if unknown:
        raise UserError(f"{source}: label {unknown[0]!r} is not in data.labels "
                        f"({', '.join(fixed)}); add it there or fix the data")
    return list(fixed)


def check_labels(examples, labels, path, train_path):
    """Every label of ``examples`` (a valid/test file) must be one trained on."""
    known = set(labels)
    for e in examples:
        if e.label not in known:
            raise UserError(f"{where(path, e.line)}: label {e.label!r} does not occur in the "
                            f"training data {train_path} (labels: {', '.join(labels)})")


# ------------------------------------------------------------ long texts

_SENTENCE_END = re.compile(r".*?(?:[。！？!?；;…\n]+|$)", re.S)


def split_sentences(text):
    """Sentence pieces, punctuation kept with the piece it ends."""
    return [s for s in _SENTENCE_END.findall(text) if s.strip()]


def split_long_text(text, count_tokens, max_tokens):
    """Pieces of ``text`` of at most ``max_tokens`` tokens each.

    Whole sentences are packed greedily; a single sentence longer than the
    budget is cut into runs of ``max_tokens`` characters' worth of tokens.
    """
    if count_tokens(text) <= max_tokens:
        return [text]
    pieces, current = [], ""
    for sentence in split_sentences(text):
        if count_tokens(sentence) > max_tokens:
            if current:
                pieces.append(current)
                current = ""
            pieces.extend(_cut(sentence, count_tokens, max_tokens))
        elif current and count_tokens(current + sentence) > max_tokens:
            pieces.append(current)
            current = sentence
        else:
            current += sentence
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def _cut(sentence, count_tokens, max_tokens):
    pieces, start = [], 0
    while start < len(sentence):
        end = min(len(sentence), start + max_tokens)
        while end > start + 1 and count_tokens(sentence[start:end]) > max_tokens:
            end -= 1
        pieces.append(sentence[start:end])
        start = end
    return pieces


@dataclasses.dataclass
class EncodedSet:
    """Token ids and label ids of one split, ready for batching."""

    token_ids: list  # list of lists of int, each [CLS] ... [SEP]
    label_ids: list  # list of int
    pieces_from_long: int = 0  # extra pieces made by splitting long texts

    def __len__(self):
        return len(self.token_ids)

    def tokens(self):
        return sum(len(t) for t in self.token_ids)


def encode_examples(examples, tokenizer, labels, max_length):
    """Split long texts to fit ``max_length`` and encode each piece with its label."""
    index = {label: i for i, label in enumerate(labels)}
    budget = max_length - 2

    def count(text):
        return len(tokenizer.tokenize(text))

    token_ids, label_ids, extra = [], [], 0
    for e in examples:
        pieces = split_long_text(e.text, count, budget)
        extra += len(pieces) - 1
        for piece in pieces:
            token_ids.append(tokenizer.encode(piece, max_length))
            label_ids.append(index[e.label])
    return EncodedSet(token_ids, label_ids, extra)
