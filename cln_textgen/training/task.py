"""What a task gives the training loop, and what the loop keeps to itself.

The :class:`~cln_textgen.training.trainer.Trainer` owns the loop, the
optimizer, the distribution strategy, checkpoints, resume, logging and
signals.  A task owns everything that depends on what is learnt: its model,
its rows and how a batch is made of them, its loss, its evaluation and its
samples.  The tasks of this package live in :mod:`cln_textgen.tasks`: the
conditional LM, the label classifier and masked-LM pretraining.

A task is any object with these members (``Task`` below states them; it is
documentation, tasks need not inherit from it):
"""

import typing


class Evaluation(typing.Protocol):
    """What :meth:`Task.evaluate` returns."""

    loss: float  # lower is better: the best checkpoint and early stopping follow it

    def log_fields(self) -> dict:
        """The ``eval`` event of ``metrics.jsonl``."""

    def describe(self) -> str:
        """One line for the console."""


class Task(typing.Protocol):
    run: object  # runs.folder.RunDir: where checkpoints, metrics and samples go
    config: object  # a config whose ``train`` section (config.TrainSection) drives the loop
    checkpoint: str | None  # the checkpoint to resume from; None: a new run
    has_valid: bool  # whether evaluate() has held-out data (else no best checkpoint)

    def row_lengths(self) -> list:
        """The length of each training row: the loop plans each epoch's batches
        from them (``data/batching.py``: bucketing, token budgets)."""

    def make_batch(self, indices, step, micro, length_multiple, rows_multiple) -> tuple:
        """The arrays of one micro-batch of rows ``indices``, for optimizer step
        ``step`` (a pure function of its arguments: resume replays it exactly).
        Lengths are rounded up to ``length_multiple`` (XLA) and rows to
        ``rows_multiple`` (the replicas) with rows that add nothing to the loss."""

    def count_targets(self, batch) -> int:
        """The loss terms of ``batch``: the step's loss is their mean."""

    def count_tokens(self, batch) -> int:
        """The real tokens of ``batch``, for the logged speed."""

    def build_model(self, dropout_seed):
        """A new Keras model whose dropout draws from ``dropout_seed``."""

    def warm_start(self, model):
        """Load the starting weights into a new run's model."""

    def training_loss(self, model, gather):
        """``loss(*batch)``: the summed loss of one replica's rows; ``gather``
        (not under XLA) allows computing the output layer at targets only."""

    def evaluate(self, model) -> Evaluation:
        """The held-out figures of ``model`` (called only with ``has_valid``)."""

    def samples(self, model) -> list:
        """``[(record, line)]``: what the model makes at an evaluation, saved as
        JSON lines in ``samples/`` and printed; ``[]`` for none."""
