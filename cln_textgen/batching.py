"""Batches for training and evaluation, padded per batch.

An epoch's batch order is a pure function of ``(seed, epoch)``, so a resumed
run can find the exact batch it stopped at from two integers.  With
``bucket_by_length`` examples are shuffled, then sorted by length inside
large windows and cut into batches whose order is shuffled again: batches hold
texts of similar length (little padding) while their order stays random.
"""

import numpy as np

_WINDOW_BATCHES = 50  # how many batches' worth of examples are sorted together


def epoch_batches(lengths, batch_size, seed, epoch, bucket=True, batch_tokens=None):
    """Index arrays, one per batch, for ``epoch`` (0-based)."""
    lengths = np.asarray(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if bucket:
        window = batch_size * _WINDOW_BATCHES
        chunks = [order[i:i + window] for i in range(0, len(order), window)]
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
    batches = _cut(order, lengths, batch_size, batch_tokens)
    if bucket:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _cut(order, lengths, batch_size, batch_tokens):
    if batch_tokens is None:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    # A token budget: a batch grows while rows x longest row stays within it
    # (and never beyond batch_size rows); a lone overlong row still forms a batch.
    batches, start, longest = [], 0, 0
    for i, index in enumerate(order):
        longest_with = max(longest, lengths[index])
        rows = i - start + 1
        if i > start and (longest_with * rows > batch_tokens or rows > batch_size):
            batches.append(order[start:i])
            start, longest_with = i, lengths[index]
        longest = longest_with
    batches.append(order[start:])
    return batches


def eval_batches(lengths, batch_size):
    """Length-sorted batches in a fixed order, for evaluation."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(token_ids, label_ids, indices, pad_id=0):
    """``(tokens int32 [rows, longest], labels int32 [rows])`` for ``indices``."""
    rows = [token_ids[i] for i in indices]
    tokens = np.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=np.int32)
    for row, ids in enumerate(rows):
        tokens[row, :len(ids)] = ids
    labels = np.asarray([label_ids[i] for i in indices], dtype=np.int32)
    return tokens, labels
