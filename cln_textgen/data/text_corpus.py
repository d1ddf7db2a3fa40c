"""Raw text for masked-LM pretraining: reading, holding out, packing rows, masking.

No TensorFlow and no tokenizer here: texts become token ids elsewhere; this
module turns id lists into the arrays of training and held-out rows, and
draws the masks, each a pure function of its seed.
"""

import numpy as np

from cln_textgen.data.examples import read_lines
from cln_textgen.data.prepare import hash_fraction
from cln_textgen.errors import UserError

# Fewest tokens of a text split across two rows that end the first.
MIN_FRAGMENT = 8
# Held-out masks are drawn once from this seed: every evaluation, and every
# run, scores the same positions.
HELD_OUT_MASK_SEED = 12345
HELD_OUT_MASK_RATE = 0.15


def read_texts(path, key):
    """The non-empty lines of a UTF-8 text file, stripped (one text a line)."""
    texts = [line.strip() for _, line in read_lines(path) if line.strip()]
    if not texts:
        raise UserError(f"{path}: no text ({key} names it); a corpus file holds one text a "
                        "line")
    return texts


def hold_out(texts, fraction):
    """``(train, held_out)``: each text goes by a hash of itself alone."""
    held = [t for t in texts if hash_fraction(t) < fraction]
    return [t for t in texts if hash_fraction(t) >= fraction], held


def pieces(id_lists, max_tokens):
    """Each id list cut into pieces of at most ``max_tokens``."""
    return [ids[i:i + max_tokens] for ids in id_lists for i in range(0, len(ids), max_tokens)]


def pack_rows(id_pieces, length, cls_id, sep_id, pad_id):
    """Pack consecutive pieces as ``[CLS] a [SEP] b [SEP] ...`` into rows of ``length``.

    Rows are filled up: a piece that does not fit is split, its head ending
    this row and its tail starting the next, unless fewer than
    ``MIN_FRAGMENT`` tokens would go in the head, so nearly every position
    holds a real token.  The first piece of a row is segment 0 and the rest
    segment 1, as in BERT's sentence pairs.  Returns ``(token_ids,
    segment_ids)``, int32 arrays padded with ``pad_id``.
    """
    rows, row, segments = [], [cls_id], [0]
    for ids in id_pieces:
        ids = list(ids)
        while ids:
            room = length - len(row) - 1  # keep a place for the closing [SEP]
            if room < min(len(ids), MIN_FRAGMENT):
                rows.append((row, segments))
                row, segments = [cls_id], [0]
                continue
            head, ids = ids[:room], ids[room:]
            segment = 0 if len(row) == 1 else 1
            row = row + head + [sep_id]
            segments = segments + [segment] * (len(head) + 1)
    if len(row) > 1:
        rows.append((row, segments))
    return _pad(rows, length, pad_id)


def single_rows(id_pieces, cls_id, sep_id, pad_id):
    """One ``[CLS] piece [SEP]`` row per piece, padded to the longest."""
    length = max(len(ids) for ids in id_pieces) + 2
    return _pad([([cls_id, *ids, sep_id], [0] * (len(ids) + 2)) for ids in id_pieces],
                length, pad_id)


def _pad(rows, length, pad_id):
    token_ids = np.full((len(rows), length), pad_id, dtype=np.int32)
    segment_ids = np.zeros((len(rows), length), dtype=np.int32)
    for i, (row, segments) in enumerate(rows):
        token_ids[i, :len(row)] = row
        segment_ids[i, :len(segments)] = segments
    return token_ids, segment_ids


def mask_rows(token_ids, rng, special_ids, mask_id, vocab_size, rate, always_mask=False):
    """BERT's masking: ``(inputs, targets)``, ``targets`` True where a token is to be named.

    Each token that is not special is chosen with probability ``rate``; a
    chosen token becomes [MASK] 80% of the time, a random non-special token
    10% and stays itself 10% (``always_mask``, for held-out rows: always
    [MASK], so every scored position shows [MASK]).
    """
    maskable = ~np.isin(token_ids, special_ids)
    chosen = maskable & (rng.random(token_ids.shape) < rate)
    action = rng.random(token_ids.shape)
    if always_mask:
        action[:] = 0.0
    inputs = token_ids.copy()
    inputs[chosen & (action < 0.8)] = mask_id
    randomize = chosen & (action >= 0.8) & (action < 0.9)
    ordinary = np.setdiff1d(np.arange(vocab_size), special_ids)
    inputs[randomize] = rng.choice(ordinary, size=int(randomize.sum()))
    return inputs, chosen


def next_token_rows(token_ids, pad_id):
    """Left-to-right targets: at each position the next token, and where one is real."""
    labels = np.full_like(token_ids, pad_id)
    labels[:, :-1] = token_ids[:, 1:]
    return labels, labels != pad_id
