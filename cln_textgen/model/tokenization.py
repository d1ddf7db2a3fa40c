"""Text <-> token ids with a BERT vocabulary (bert4keras's WordPiece tokenizer)."""

from collections import Counter
from pathlib import Path

from cln_textgen.backend import bert4keras
from cln_textgen.errors import UserError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_vocab(path):
    """``{token: id}`` in file order."""
    try:
        return bert4keras.tokenizers.load_vocab(str(path))
    except FileNotFoundError:
        raise UserError(f"{path}: vocabulary file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: vocabulary is not UTF-8 text") from None


def simplify_vocab(token_dict):
    """Drop tokens plain text never produces (bert4keras's rule, e.g. ``##中``).

    Returns ``(new_token_dict, keep_ids)`` where ``keep_ids[i]`` is the old id
    of new id ``i``; the special tokens stay first.
    """
    missing = [t for t in SPECIAL_TOKENS[:4] if t not in token_dict]
    if missing:
        raise UserError(f"vocabulary lacks {', '.join(missing)}; it is not a BERT vocab.txt")
    specials = [t for t in SPECIAL_TOKENS if t in token_dict]
    full = dict(token_dict)
    new, keep = {}, []
    for token in specials:
        new[token] = len(new)
        keep.append(full[token])
    for token, index in sorted(full.items(), key=lambda item: item[1]):
        if token not in new and not bert4keras.tokenizers.Tokenizer._is_redundant(token):
            new[token] = len(new)
            keep.append(index)
    return new, keep


# Every ASCII letter and digit, alone and as a word piece, so that any ASCII
# word can be word-pieced instead of becoming one [UNK].
_ASCII_ALNUM = "abcdefghijklmnopqrstuvwxyz0123456789"


def build_vocab(texts, min_count=1, lower_case=True):
    """``[tokens]`` of a character-level WordPiece vocabulary for ``texts``: the
    special tokens, then every piece seen ``min_count`` times or more, by falling
    count (ties by the piece: the same texts give the same vocabulary).

    A word (a run of non-CJK characters: Latin words, numbers) counts its first
    character as ``c`` and the rest as ``##c``, the pieces WordPiece splits it
    into; CJK characters and punctuation stand alone.  Every ASCII letter and
    digit is kept in both forms.
    """
    splitter = bert4keras.tokenizers.Tokenizer(
        {token: i for i, token in enumerate(SPECIAL_TOKENS)}, do_lower_case=lower_case,
        token_start=None, token_end=None)
    counts = Counter()
    for text in texts:
        for word in splitter.tokenize(text):
            counts[word[0]] += 1
            counts.update("##" + ch for ch in word[1:])
    counts = Counter({piece: n for piece, n in counts.items()
                      if n >= min_count and piece not in SPECIAL_TOKENS})
    for ch in _ASCII_ALNUM:
        for piece in (ch, "##" + ch):
            counts.setdefault(piece, 0)
    return list(SPECIAL_TOKENS) + sorted(counts, key=lambda piece: (-counts[piece], piece))


def write_vocab(path, token_dict):
    tokens = sorted(token_dict, key=token_dict.get)
    Path(path).write_text("".join(t + "\n" for t in tokens), encoding="utf-8")


class TextTokenizer:
    """Encode text for the LM (``[CLS] text [SEP]``) and decode ids to clean text."""

    def __init__(self, token_dict, lower_case=True):
        for token in SPECIAL_TOKENS[:4]:
            if token not in token_dict:
                raise UserError(f"vocabulary lacks {token}; it is not a BERT vocab.txt")
        self.token_dict = token_dict
        self.lower_case = lower_case
        self._tokenizer = bert4keras.tokenizers.Tokenizer(token_dict, do_lower_case=lower_case)
        self.pad_id = token_dict["[PAD]"]
        self.unk_id = token_dict["[UNK]"]
        self.cls_id = token_dict["[CLS]"]
        self.sep_id = token_dict["[SEP]"]
        self.special_ids = sorted(token_dict[t] for t in SPECIAL_TOKENS if t in token_dict)

    @classmethod
    def from_file(cls, path, lower_case=True):
        return cls(read_vocab(path), lower_case)

    @property
    def vocab_size(self):
        return len(self.token_dict)

    def tokenize(self, text):
        """Word pieces of ``text`` without [CLS]/[SEP]."""
        return self._tokenizer.tokenize(text)[1:-1]

    def ids(self, text):
        """The ids of ``text``'s word pieces, without [CLS]/[SEP] and uncut."""
        return self._tokenizer.tokens_to_ids(self.tokenize(text))

    def encode(self, text, max_length=None):
        """``[CLS] text [SEP]`` ids, cut to ``max_length`` keeping [SEP]."""
        ids, _ = self._tokenizer.encode(text, maxlen=max_length)
        return ids

    def encode_prompt(self, text):
        """``[CLS] prompt`` ids: the start of a generation, no [SEP]."""
        return self.encode(text)[:-1]

    def decode(self, ids):
        """Readable text; special tokens dropped, CJK characters joined without spaces."""
        return self._tokenizer.decode([int(i) for i in ids])
