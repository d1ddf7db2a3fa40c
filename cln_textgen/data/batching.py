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


def planned_steps(steps_per_epoch, max_steps=None):
    """The optimizer steps a run plans: those of its epochs in all, capped at
    ``max_steps`` (None: no cap).  The learning-rate schedule spans them."""
    total = sum(steps_per_epoch)
    return min(total, max_steps) if max_steps else total


def eval_batches(lengths, batch_size):
    """Length-sorted batches in a fixed order, for evaluation."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def round_up(value, multiple):
    """The smallest multiple of ``multiple`` that is >= ``value``."""
    return -(-value // multiple) * multiple


def pad_batch(token_ids, label_ids, indices, pad_id=0, length_multiple=1, rows_multiple=1):
    """``(tokens int32 [rows, length], labels int32 [rows])`` for ``indices``.

    ``length`` is the longest row rounded up to ``length_multiple``: under XLA
    every new shape is a new compilation, so lengths are kept to a few values.
    ``rows`` is rounded up to ``rows_multiple`` (the replicas, which split the
    rows evenly) with filler rows: the first token of the first row, then
    padding.  A filler row has no target, so it adds nothing to the loss, and
    its one real token keeps its attention well defined.
    """
    rows = [token_ids[i] for i in indices]
    length = round_up(max(len(r) for r in rows), length_multiple)
    count = round_up(len(rows), rows_multiple)
    tokens = np.full((count, length), pad_id, dtype=np.int32)
    for row, ids in enumerate(rows):
        tokens[row, :len(ids)] = ids
    tokens[len(rows):, 0] = rows[0][0]
    labels = np.zeros(count, dtype=np.int32)
    labels[:len(rows)] = [label_ids[i] for i in indices]
    return tokens, labels


# Keeps the label-dropout draws apart from any other stream seeded by (seed, ...).
_LABEL_DROPOUT_STREAM = 0x1abe1


def drop_labels(labels, rate, null_id, seed, step, micro=0):
    """``labels`` with each row replaced by ``null_id`` with probability ``rate``.
    Which rows is a pure function of ``(seed, step, micro)``: a resumed run
    drops the same rows as an unbroken one."""
    rng = np.random.default_rng([seed, step, micro, _LABEL_DROPOUT_STREAM])
    drop = rng.random(len(labels)) < rate
    return np.where(drop, null_id, labels).astype(np.int32)


def real_targets(tokens, pad_id=0):
    """How many next-token targets of a padded batch are real (not padding)."""
    return int(np.count_nonzero(tokens[:, 1:] != pad_id))
