"""What the tasks on labelled text share: rows of ``[CLS] text [SEP]`` ids with a label.

The conditional LM and the label classifier read the same splits
(:mod:`cln_textgen.data.corpus`); their batches are the same padded
``(tokens, labels)``, which each task then feeds its own way.
"""

from cln_textgen.data import batching


class LabelledRows:
    """The task-protocol members of a task with ``train`` and ``valid`` splits and
    a ``tokenizer`` (see :mod:`cln_textgen.training.task`)."""

    @property
    def has_valid(self):
        return self.valid is not None

    def row_lengths(self):
        return [len(t) for t in self.train.encoded.token_ids]

    def padded(self, indices, length_multiple=1, rows_multiple=1):
        """``(tokens, labels)`` of train rows ``indices``, padded per batch."""
        encoded = self.train.encoded
        return batching.pad_batch(encoded.token_ids, encoded.label_ids, indices,
                                  self.tokenizer.pad_id, length_multiple=length_multiple,
                                  rows_multiple=rows_multiple)

    def count_tokens(self, batch):
        return batching.real_targets(batch[0], self.tokenizer.pad_id)
