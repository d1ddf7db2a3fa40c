"""A run's data: the label list, the tokenizer and encoded splits."""

import dataclasses

from cln_textgen.data.examples import build_label_vocab, check_labels, encode_examples, read_examples


@dataclasses.dataclass
class Split:
    name: str
    path: str
    encoded: object  # data.EncodedSet
    texts: int  # lines read, before long texts were split
    empty_skipped: int

    def describe(self):
        pieces = self.encoded.pieces_from_long
        extra = f", {pieces} extra pieces from long texts" if pieces else ""
        empty = f", {self.empty_skipped} empty lines skipped" if self.empty_skipped else ""
        return (f"{self.name}: {self.path}: {self.texts} texts -> {len(self.encoded)} examples, "
                f"{self.encoded.tokens()} tokens{extra}{empty}")


def read_train_labels(config):
    """Examples of the train file and the label list (in id order) built from it."""
    examples, stats = read_examples(config.data.train, config.data.format)
    labels = build_label_vocab(examples, config.data.labels, config.data.train)
    return examples, stats, labels


def load_split(name, path, config, tokenizer, labels, examples=None, stats=None):
    """Read (unless given), check labels, split long texts and encode one split."""
    if examples is None:
        examples, stats = read_examples(path, config.data.format)
        check_labels(examples, labels, path, config.data.train)
    encoded = encode_examples(examples, tokenizer, labels, config.data.max_length)
    return Split(name, str(path), encoded, len(examples), stats.empty_skipped)
